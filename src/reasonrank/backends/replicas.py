"""Model replicas on a Ray cluster, as one Backend: `RerankerSpec(ray="local", replicas=2)`.

Each replica is a Ray actor that builds its own engine in its constructor from the spec (the model is
never pickled: every node loads it from its own disk or hub cache) and answers `generate` calls; the
driver alone renders prompts, parses answers and writes the journal. To the reranker this is just
a backend whose `generate` may be called from several threads at once (CALLS_PER_REPLICA a replica): the
listwise driver (reasonrank.rerankers.listwise) sends a query's next window as soon as its last one
returns, so no step waits for the slowest window.

Why Ray Core actors and not Ray Data / `ray.data.llm` / `ActorPool` (Ray 2.60's docs and source): a
sliding window's next window depends on the last one, which one-shot dataset pipelines cannot
express (each run builds a new actor pool, a model reload per step); `ActorPool` is a DeveloperAPI,
keeps one call in flight per actor and drops dead actors.

Failures: an actor is restarted by Ray up to `RESTARTS` times (its constructor reloads the model).
Calls are not retried by Ray (`max_task_retries=0`): a call whose replica died is sent to a live
replica at once, counted in `stats["replica_retries"]`, while the dead one restarts; it takes calls
again once a probe of it answers. When no replica is left the call raises `ReplicasLost`: the run
stops with that one error, and the journal holds every window finished before it.

Threads per replica: Ray sets OMP_NUM_THREADS from num_cpus but pins no cores, and llama.cpp does not
read it, so a replica's llama.cpp is given `cpus_per_replica` threads unless the spec says otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
from typing import Any, Sequence

from reasonrank.backends.base import Capabilities, Generation, Prompt, SamplingParams
from reasonrank.errors import ConfigError, ReasonRankError, require

log = logging.getLogger(__name__)
RESTARTS = 2  # restarts Ray grants each replica (each reloads the model)
# calls kept in flight per replica: one running and one queued, so a batching engine never idles between calls;
# one for an engine that runs one prompt at a time (llama.cpp): its call takes seconds against a 1 ms round
# trip, and its forced answer then follows its window with nothing between (no cache rebuild,
# LlamaCppBackend._align_cache)
CALLS_PER_REPLICA = 2
BATCH = 32  # windows per call for engines that batch any number (vLLM): a replica's share of a step
OBJECT_STORE_BYTES = 256 << 20  # a local cluster's object store: windows are ~25 KB, Ray's default is 30% of RAM


class ReplicasLost(ReasonRankError):
    """Every replica died and none can restart: the run stops (the journal keeps what finished)."""


def _actor_class():
    import ray

    class Replica:
        """One engine on one Ray worker, built from the spec in the worker."""

        def __init__(self, engine: dict):
            from reasonrank.backends.factory import get_backend

            self.backend = get_backend(engine["backend"], engine["model"], **engine["options"])

        def describe(self) -> dict:
            b = self.backend
            return {"name": b.name, "model": b.model, "capabilities": dataclasses.asdict(b.capabilities),
                    "prompt_format": getattr(b, "prompt_format", "text"), "fingerprint": b.fingerprint(), "pid": os.getpid()}

        def generate(self, prompts: list, params: SamplingParams, prompt_format: str) -> list[Generation]:
            self.backend.prompt_format = prompt_format
            return self.backend.generate(prompts, params)

        def close(self) -> None:
            self.backend.close()

    return ray.remote(Replica)


class RayReplicas:
    """`replicas` engines on a Ray cluster behind the Backend interface (see the module docstring)."""

    def __init__(self, spec, *, ray_address: str, replicas: int = 1, gpus_per_replica: float = 0,
                 cpus_per_replica: float = 1):
        ray = require("ray", "ray", "Reranking on a Ray cluster (--ray)")
        self._ray = ray
        self.stats: dict[str, Any] = {"replica_retries": 0, "replica_deaths": 0}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        options = _replica_options(spec, gpus_per_replica, cpus_per_replica)  # refused before a cluster starts
        self._owns_cluster, self._guard = connect(ray_address)
        actor = _actor_class().options(max_restarts=RESTARTS, max_task_retries=0, num_cpus=cpus_per_replica,
                                       num_gpus=gpus_per_replica if gpus_per_replica <= 1 else 0)
        self._placement = []
        self.replicas = []
        for _ in range(replicas):
            strategy = self._placement_strategy(gpus_per_replica, cpus_per_replica)
            self.replicas.append(actor.options(scheduling_strategy=strategy).remote(options) if strategy else actor.remote(options))
        self._bound = [0] * replicas  # driver threads bound to each replica
        self._dead: set[int] = set()  # replicas that will never answer again
        self._probes: dict[int, Any] = {}  # restarting replica -> probe (its describe call)
        try:
            described = ray.get([r.describe.remote() for r in self.replicas])
        except Exception as exc:
            self.close()
            raise ReasonRankError(f"a replica failed to load its model: {_reason(exc)}") from None
        self._adopt(described)
        self.pids = [d["pid"] for d in described]

    # -- the Backend interface -------------------------------------------------------------------------

    def _adopt(self, described: list[dict]) -> None:
        """Take name, model and fingerprint from the replicas; refuse a mix (another model file on one node)."""
        first = described[0]
        for k, d in enumerate(described[1:], 1):
            if d["fingerprint"] != first["fingerprint"]:
                diff = {key: (first["fingerprint"].get(key), d["fingerprint"].get(key))
                        for key in first["fingerprint"].keys() | d["fingerprint"].keys()
                        if first["fingerprint"].get(key) != d["fingerprint"].get(key)}
                self.close()
                raise ReasonRankError(f"replicas 0 and {k} load different engines: "
                                      + "; ".join(f"{key}: {a} != {b}" for key, (a, b) in sorted(diff.items())))
        self.name, self.model, self._fingerprint = first["name"], first["model"], first["fingerprint"]
        self.prompt_format = first["prompt_format"]
        inner = Capabilities(**{**first["capabilities"], "prompt_formats": tuple(first["capabilities"]["prompt_formats"])})
        self.capabilities = Capabilities(batch_size=inner.batch_size or BATCH, prompt_formats=inner.prompt_formats,
                                         concurrency=len(described) * (1 if inner.batch_size == 1 else CALLS_PER_REPLICA), stats=True)

    def fingerprint(self) -> dict:
        return dict(self._fingerprint)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """The replica bound to this thread answers; a dead one's call goes to a live one (counted)."""
        while True:
            k = self._replica_for_thread()
            try:
                return self._ray.get(self.replicas[k].generate.remote(list(prompts), params, self.prompt_format))
            except self._ray.exceptions.RayActorError as exc:  # died, or unreachable while it restarts
                self._lost(k, exc)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for actor in getattr(self, "replicas", []):
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for group in self._placement:
            self._ray.util.remove_placement_group(group)
        if self._owns_cluster:
            self._ray.shutdown()
        if self._guard is not None:
            self._guard.terminate()

    # -- replicas ----------------------------------------------------------------------------------------

    def _replica_for_thread(self) -> int:
        """Each driver thread keeps one replica (the forced answer of a window then finds its prompt in that
        replica's cache), threads spread evenly; a thread whose replica is down moves to a live one."""
        with self._lock:
            self._collect_probes()
            k = getattr(self._local, "replica", None)
            if k is not None and k not in self._dead and k not in self._probes:
                return k
            if k is not None:
                self._bound[k] -= 1
            live = [j for j in range(len(self.replicas)) if j not in self._dead and j not in self._probes]
            if not live:
                k = self._wait_for_restart()
            else:
                k = min(live, key=lambda j: self._bound[j])
            self._bound[k] += 1
            self._local.replica = k
            return k

    def _lost(self, k: int, exc: BaseException) -> None:
        with self._lock:
            self.stats["replica_retries"] += 1
            if k in self._dead or k in self._probes:
                return
            self.stats["replica_deaths"] += 1
            log.warning("replica %d died (%s): its calls go to the others while Ray restarts it", k, _reason(exc))
            self._probes[k] = self.replicas[k].describe.remote()

    def _collect_probes(self) -> None:
        """Replicas whose restart finished take calls again; those that cannot restart are dead."""
        if not self._probes:
            return
        ready, _ = self._ray.wait(list(self._probes.values()), num_returns=len(self._probes), timeout=0)
        for k, probe in list(self._probes.items()):
            if probe in ready:
                del self._probes[k]
                try:
                    self._ray.get(probe)
                except Exception:  # noqa: BLE001 - restarts exhausted, or the model no longer loads
                    self._dead.add(k)

    def _wait_for_restart(self) -> int:
        """Every replica is down: wait for a restart (with the lock: nothing else can be sent meanwhile)."""
        while self._probes:
            self._ray.wait(list(self._probes.values()), num_returns=1)
            self._collect_probes()
            live = [j for j in range(len(self.replicas)) if j not in self._dead and j not in self._probes]
            if live:
                return min(live, key=lambda j: self._bound[j])
        raise ReplicasLost(f"all {len(self.replicas)} replicas died and none could restart (each may restart "
                           f"{RESTARTS} times); the journal keeps every finished window: rerun to resume")

    def _placement_strategy(self, gpus: float, cpus: float):
        """Tensor parallel (more than one GPU a replica): a placement group of one bundle per GPU, which
        vLLM's Ray executor inside the replica uses for its workers."""
        if gpus <= 1:
            return None
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"GPU": 1, "CPU": 1}] * int(gpus), strategy="STRICT_PACK")
        self._ray.get(group.ready())
        self._placement.append(group)
        return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_capture_child_tasks=True)


def _replica_options(spec, gpus: float, cpus: float) -> dict:
    """What each replica builds its engine from (reasonrank.spec.load_backend's arguments to get_backend),
    with llama.cpp's threads and vLLM's tensor parallel size set from the replica's resources unless the
    spec sets them."""
    from reasonrank.backends.factory import backend_name

    options = dict(spec.backend_options)
    name = backend_name(spec.backend, spec.model, **options)
    if name == "openai":
        raise ConfigError("--ray starts model replicas; an OpenAI-compatible server already is one: "
                          "pass several --base-url instead (README: Ray)")
    if spec.lora:
        options["lora"] = spec.lora
    if name == "llamacpp":
        options.setdefault("n_threads", max(1, int(cpus)))
    if name == "vllm" and gpus > 1:
        options.setdefault("tensor_parallel_size", int(gpus))
        options.setdefault("distributed_executor_backend", "ray")
    return {"backend": name, "model": spec.model, "options": options}


def connect(address: str) -> tuple[bool, subprocess.Popen | None]:
    """Join the cluster at `address` (`auto`, `HOST:PORT`) or start one (`local`): (whether we started it,
    the guard process that stops it if this process is killed). A driver already connected stays so.

    A local cluster gets no dashboard and a small object store. Ray 2.59+ turns on token auth for local
    clusters and keeps the token in ~/.ray; a cluster someone started is joined with its token (~/.ray/
    auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, as `ray start` left it)."""
    import ray

    if ray.is_initialized():
        return False, None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address == "local":
        # address "local": a new cluster even where one runs already (ray.init() alone would join it)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **quiet)
        return True, _guard()
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ReasonRankError(f"--ray {address}: cannot join the Ray cluster ({_reason(exc)}); start one with "
                              "`ray start --head`, or pass --ray local") from None
    return False, None


def _guard() -> subprocess.Popen:
    """A process that outlives a killed driver and stops the cluster it started: a SIGKILLed driver
    leaves Ray's gcs_server, raylet and agents running otherwise (ray::DashboardAgent and
    RuntimeEnvAgent outlive even the raylet). In a session of its own, it notes the driver's
    descendants twice a second while the driver lives, then kills them (each checked by its start
    time, so a reused pid is left alone). After a clean close the driver stops it."""
    return subprocess.Popen([sys.executable, "-m", "reasonrank.backends.replicas", str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _watch(driver: int) -> None:
    import time

    import psutil

    seen: dict[int, float] = {}
    try:
        process = psutil.Process(driver)
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            for child in process.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child.create_time())
            time.sleep(0.5)
    except psutil.Error:
        pass
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.kill()
        except psutil.Error:
            pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def replicas_for(spec) -> RayReplicas:
    """The RayReplicas a spec with `ray` set describes."""
    return RayReplicas(spec, ray_address=spec.ray, replicas=spec.replicas or 1, gpus_per_replica=spec.gpus_per_replica or 0,
                       cpus_per_replica=spec.cpus_per_replica or 1)


if __name__ == "__main__":  # the guard (see _guard)
    _watch(int(sys.argv[1]))
