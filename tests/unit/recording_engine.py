"""A stand-in docker client that records what `Project.start` asks the engine to create.

Only what `start` touches: `containers.get` (nothing exists yet), `containers.create` (recorded),
the created container's `start`, and `volumes.get` / `volumes.create` for the stack's own
volumes. The recorded keyword arguments are exactly those docker-py's `containers.create`
receives, so tests compare them with the compose export and keep them in a golden file.
"""

from __future__ import annotations

import json
from typing import Any

from docker.errors import NotFound

from llmstack import names, plan
from llmstack.engine.containers import Project


class _Created:
    def __init__(self, number: int) -> None:
        self.id = f"container-{number}"

    def start(self) -> None:
        pass

    def put_archive(self, path: str, data: bytes) -> bool:
        return True

    def remove(self, **_: Any) -> None:
        pass


class _Containers:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    def get(self, name: str) -> Any:
        raise NotFound(name)

    def create(self, image: str, **kwargs: Any) -> _Created:
        self.created.append((image, kwargs))
        return _Created(len(self.created))


class _Volumes:
    def __init__(self) -> None:
        self.created: list[str] = []

    def get(self, name: str) -> Any:
        raise NotFound(name)

    def create(self, name: str, **_: Any) -> None:
        self.created.append(name)


class RecordingClient:
    def __init__(self) -> None:
        self.containers = _Containers()
        self.volumes = _Volumes()


def started(project: str, services: list[plan.ServiceSpec]) -> dict[str, dict[str, Any]]:
    """{service: the image and keyword arguments `Project.start` passes to containers.create}."""
    client = RecordingClient()
    runner = Project(client, project)  # type: ignore[arg-type]
    for svc in services:
        runner.start(svc)
    # Containers without a service label are doors into volumes, created and never started.
    return {kwargs["labels"][names.LABEL_SERVICE]: {"image": image, **kwargs}
            for image, kwargs in client.containers.created
            if names.LABEL_SERVICE in kwargs["labels"]}


def as_json(kwargs: dict[str, Any]) -> Any:
    """The recorded arguments as plain JSON data (Mount and DeviceRequest are dicts), the config
    hash label replaced by a placeholder so that a golden file shows settings, not digests."""
    data = json.loads(json.dumps(kwargs, sort_keys=True))
    if names.LABEL_HASH in data.get("labels", {}):
        data["labels"][names.LABEL_HASH] = "<config hash>"
    return data
