"""The edge: nginx's secret files (key maps, TLS pair) and its graceful reloads, for `up` and
`rotate-key`. Every step goes through the engine interface, so it runs the same on a remote
engine and on the fake one in the unit tests.

A reload only signals nginx's master: until the new workers run, old ones keep accepting
connections with the old keys and upstream addresses. `graceful_reload` waits for that switch
(the nginx image has sh but no ps: workers are read from /proc).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from . import names, plan, render
from .engine.api import Engine
from .errors import DeployError
from .spec import StackSpec

KEYS_FILE = render.KEYS_FILE
RELOAD_DEADLINE = 30.0  # seconds for nginx to replace its workers after `up`'s reload
WORKER_TITLE = "nginx: worker process"  # old workers become "... is shutting down"
# Lists nginx's processes as "PID TITLE" lines (the image has sh but no ps).
WORKERS_SCRIPT = ('for p in /proc/[0-9]*; do printf "%s " "${p#/proc/}"; '
                  'tr "\\0" " " < "$p/cmdline" 2>/dev/null; echo; done')
# Runs in the health container: GET URL with each key (taken from the environment, never from
# the arguments) on a fresh connection, so it lands on a worker that accepts new connections.
KEYS_PROBE = (
    "import json,os,ssl,sys,urllib.request,urllib.error\n"
    "ctx=ssl._create_unverified_context()\n"
    "out=[]\n"
    "for name in sys.argv[2:]:\n"
    "    auth={'Authorization':'Bearer '+os.environ[name]}\n"
    "    req=urllib.request.Request(sys.argv[1],headers=auth)\n"
    "    try:\n"
    "        out.append(str(urllib.request.urlopen(req,timeout=10,context=ctx).status))\n"
    "    except urllib.error.HTTPError as e:\n"
    "        out.append(str(e.code))\n"
    "    except Exception as e:\n"
    "        out.append('ERR '+type(e).__name__)\n"
    "print(json.dumps(out))\n"
)

SecretFiles = dict[str, tuple[bytes, int]]


def secrets_current(engine: Engine, secret_files: SecretFiles) -> bool:
    """Whether nginx's config volume holds exactly these secret files (one archive read of
    the secrets folder instead of one per file)."""
    live = engine.read_tree(names.NGINX, render.SECRETS_DIR)
    return all(live.get(n) == data for n, (data, _) in secret_files.items())


def config_current(engine: Engine, nginx: plan.ServiceSpec) -> bool:
    """Whether nginx's config volume holds exactly its rendered config files (nginx.conf):
    they are not in its config hash, a change is applied by a reload (`reload_nginx`)."""
    live = engine.read_tree(names.NGINX, nginx.config_mount)
    base = nginx.config_mount.rsplit("/", 1)[-1]
    return all(live.get(f"{base}/{n}") == data for n, data in nginx.config.items())


def ship(engine: Engine, nginx: plan.ServiceSpec, secret_files: SecretFiles) -> None:
    """Write nginx's config volume: its rendered files and the secret files (nothing is
    loaded until nginx starts or reloads). A `nginx` with config={} ships the secrets only."""
    engine.write_config(nginx, secret_files)


def check_nginx_config(engine: Engine, nginx: plan.ServiceSpec, what: str, hint: str) -> None:
    """`nginx -t` on the files in the config volume, before any reload loads them."""
    code, out = engine.exec(names.NGINX, ["nginx", "-t", "-q", "-c",
                                          f"{nginx.config_mount}/nginx.conf"])
    if code != 0:
        raise DeployError(f"nginx rejected {what}: {out.strip()[:500]}", hint)


def serving_workers(engine: Engine) -> set[str]:
    """PIDs of the nginx workers that accept new connections (an old worker drops its
    listening sockets when it takes the "shutting down" title); empty without a shell."""
    code, out = engine.exec(names.NGINX, ["sh", "-c", WORKERS_SCRIPT])
    if code != 0:
        return set()
    return _workers(out)


def graceful_reload(engine: Engine, nginx: plan.ServiceSpec, deadline_s: float) -> None:
    """`nginx -s reload`, then wait until every worker taking new connections is new.

    The reload only signals the master. Until new workers run, old ones accept connections
    with the old keys and upstream addresses (a recreated LiteLLM has a new IP: 504s).
    """
    before = serving_workers(engine)
    code, out = engine.exec(names.NGINX, ["nginx", "-s", "reload", "-c",
                                          f"{nginx.config_mount}/nginx.conf"])
    if code != 0:
        raise DeployError(f"nginx reload failed: {out.strip()[:500]}", "`llmstack logs nginx`")
    if not before:
        return  # no shell in a custom nginx image: cannot watch the workers
    _wait_for_new_workers(engine, before, deadline_s)


SWAP_MARK = "--- nginx -t and reload ---"


def swap(engine: Engine, nginx: plan.ServiceSpec, deadline_s: float, what: str,
         hint: str) -> None:
    """`nginx -t`, then the reload, in ONE exec that first lists the serving workers; then
    wait until every worker taking new connections is new.

    The same steps as check_nginx_config + graceful_reload, with two exec round trips fewer
    before the new files take effect (an exec costs 0.2-0.6 s on a busy engine): what
    `keys revoke` needs to refuse a key everywhere within about 2 s.
    """
    conf = f"{nginx.config_mount}/nginx.conf"
    script = (f'{WORKERS_SCRIPT}; echo "{SWAP_MARK}"; '
              f'nginx -t -q -c {conf} 2>&1 || exit 3; nginx -s reload -c {conf} 2>&1 || exit 4')
    code, out = engine.exec(names.NGINX, ["sh", "-c", script])
    listing, marked, rest = out.partition(SWAP_MARK)
    if code == 3:
        raise DeployError(f"nginx rejected {what}: {rest.strip()[:500]}", hint)
    if code != 0 or not marked:
        raise DeployError(f"nginx reload failed: {out.strip()[:500]}", "`llmstack logs nginx`")
    before = _workers(listing)
    if not before:
        return
    _wait_for_new_workers(engine, before, deadline_s)


def _workers(listing: str) -> set[str]:
    pids = set()
    for line in listing.splitlines():
        pid, _, title = line.partition(" ")
        if title.strip() == WORKER_TITLE:
            pids.add(pid)
    return pids


def _wait_for_new_workers(engine: Engine, before: set[str], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        serving = serving_workers(engine)
        if serving and not serving & before:
            return
        if time.monotonic() > deadline:
            raise DeployError(
                f"nginx did not switch to its new configuration within {deadline_s:.0f}s:"
                "\n" + engine.tail_logs(names.NGINX, 10),
                "the old configuration keeps serving; `llmstack logs nginx`, then "
                "`llmstack up` again")
        time.sleep(0.05)


# Old workers finish their requests within worker_shutdown_timeout; `up` waits that long
# (and a little) before it stops the containers they may still be talking to.
DRAIN_DEADLINE = render.WORKER_SHUTDOWN_TIMEOUT + 10.0
SHUTTING_DOWN = "shutting down"


def wait_drained(engine: Engine, deadline_s: float) -> bool:
    """Wait until no old nginx worker ("... is shutting down") is left: every request
    that started before the reload has finished. False when it cannot tell or gave up."""
    deadline = time.monotonic() + deadline_s
    while True:
        code, out = engine.exec(names.NGINX, ["sh", "-c", WORKERS_SCRIPT])
        if code != 0:
            return False
        if SHUTTING_DOWN not in out:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def reload_nginx(engine: Engine, nginx: plan.ServiceSpec, secret_files: SecretFiles) -> None:
    """`up`'s reload: ship the config and secret files, `nginx -t`, reload gracefully
    (in-flight requests finish on the old workers)."""
    base = nginx.config_mount.rsplit("/", 1)[-1] + "/"
    before = {n.removeprefix(base): d for n, d in
              engine.read_tree(names.NGINX, nginx.config_mount).items()}
    ship(engine, nginx, secret_files)
    try:
        check_nginx_config(engine, nginx, "its new configuration",
                           "the running nginx keeps the old one; fix and run `llmstack up`")
    except DeployError:
        # Put the files it runs back, so that the next `up` sees the change still to do.
        engine.write_config(replace(nginx, config={}), {
            n: (d, 0o600 if n.startswith(render.SECRETS_SUBDIR + "/") else 0o644)
            for n, d in before.items()})
        raise
    graceful_reload(engine, nginx, RELOAD_DEADLINE)


@dataclass(frozen=True)
class Edge:
    """The running stack's edge as `rotate-key` drives it: key files shipped, tested and
    reloaded, and keys probed from inside the stack's network."""

    engine: Engine
    nginx: plan.ServiceSpec  # with config={}: only secret files are shipped, see ship
    url: str  # an authenticated URL on nginx, reachable from the health container
    swap_deadline: float = 20.0  # seconds for nginx to replace its workers
    verify_deadline: float = 20.0  # seconds for the keys to answer as expected

    @classmethod
    def of(cls, stack: StackSpec, nginx: plan.ServiceSpec, engine: Engine,
           swap_deadline: float, verify_deadline: float) -> Edge:
        """The edge of a stack: keys probed on its first plain listener, else on HTTPS."""
        plain = [n for n in ("local", "lan") if getattr(stack.listeners, n).enabled]
        host = names.container(stack.project, names.NGINX)
        url = (f"http://{host}:{names.NGINX_PORTS[plain[0]]}/v1/models" if plain
               else f"https://{host}:{names.NGINX_PORTS['https']}/v1/models")
        return cls(engine, replace(nginx, config={}), url, swap_deadline, verify_deadline)

    def statuses(self, keys: list[str]) -> list[str]:
        env = {f"K{i}": key for i, key in enumerate(keys)}
        code, out = self.engine.exec(names.HEALTH, ["python3", "-c", KEYS_PROBE, self.url,
                                                    *env], environment=env)
        if code != 0:
            return [f"ERR probe exit {code}"] * len(keys)
        try:
            return [str(s) for s in json.loads(out.strip().splitlines()[-1])]
        except (ValueError, IndexError):
            return [f"ERR {out.strip()[:100]}"] * len(keys)

    def expect(self, wanted: dict[str, str], labels: dict[str, str]) -> None:
        """Poll until each key answers its wanted status; `labels` name keys in errors."""
        keys = list(wanted)
        deadline = time.monotonic() + self.verify_deadline
        while True:
            got = self.statuses(keys)
            if got == [wanted[k] for k in keys]:
                return
            if time.monotonic() > deadline:
                detail = ", ".join(f"{labels[k]} key -> {g} (want {wanted[k]})"
                                   for k, g in zip(keys, got, strict=True))
                raise DeployError(f"GET {self.url} through nginx: {detail}",
                                  "`llmstack status` and `llmstack logs nginx`")
            time.sleep(0.2)

    def ship(self, keys_conf: bytes, files: SecretFiles) -> None:
        """Write nginx's secret files into its config volume (not loaded until a reload).

        Only the secret files: nginx.conf stays as `up` left it, so a rotation never applies
        unrelated stack.yaml edits behind the user's back.
        """
        ship(self.engine, self.nginx, {**files, KEYS_FILE: (keys_conf, 0o600)})

    def test_config(self) -> None:
        check_nginx_config(self.engine, self.nginx, "the new key file",
                           "`llmstack logs nginx`; `llmstack up` re-syncs nginx")

    def reload(self) -> None:
        graceful_reload(self.engine, self.nginx, self.swap_deadline)

    def swap(self) -> None:
        """test_config + reload in one exec (see `swap`)."""
        swap(self.engine, self.nginx, self.swap_deadline, "the new key files",
             "`llmstack logs nginx`; `llmstack up` re-syncs nginx")
