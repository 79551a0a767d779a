"""The only package that talks to the Docker engine (docker SDK imported lazily here)."""
