"""The trust configuration in force, reloaded whenever its files change.

Every verification asks `TrustSource.current()` first, which stats the trust
file and every JWKS it names (a few microseconds) and reloads before answering
when any of them changed: a key removed from a JWKS stops verifying with the
very next request, with no polling interval in between. `refresh()` reloads
by content (SIGHUP, and a slow background poll that catches a rewrite stat
cannot see). A configuration that no longer loads is not kept in its last good
form: every verification is denied until the files are fixed, because the
last good form may hold the key that was just being removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from govmesh.artifacts.jws import CompactJWS
from govmesh.artifacts.trust import Trust, TrustFileError, file_state, load_trust
from govmesh.verification.cache import VerifiedTokenCache

logger = logging.getLogger(__name__)

#: While the configuration does not load, how often a request may retry loading it.
RETRY_INTERVAL_S = 0.25
_STABLE_READS = 5

FileState = tuple[tuple[int, int, int, int] | None, ...]


@dataclass(frozen=True)
class TrustState:
    """One loaded configuration (or why none could be), with its own token cache.

    A state is never changed: a reload makes a new state, with a higher
    generation and an empty cache, so a token verified under old keys is
    never served from the cache under new ones.
    """

    generation: int
    trust: Trust | None
    error: str | None
    cache: VerifiedTokenCache[CompactJWS] = field(repr=False)
    files: tuple[Path, ...] = ()
    stat: FileState = ()
    loaded_at: float = 0.0

    @property
    def version(self) -> str:
        """The trust version ("" when the configuration does not load)."""
        return self.trust.version if self.trust is not None else ""


class TrustSource:
    """Holds the current TrustState; thread-unsafe by design (one event loop)."""

    def __init__(
        self,
        path: Path,
        *,
        cache_size: int,
        loader: Callable[[Path], Trust] = load_trust,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load `path`; raises TrustFileError when it cannot be used at start-up."""
        self._path = path.absolute()  # never resolved: see load_trust
        self._cache_size = cache_size
        self._loader = loader
        self._monotonic = monotonic
        self.reloads = 0
        # Hits and misses of caches already replaced by a reload.
        self._retired = (0, 0)
        trust, stat = self._load_stable()
        self._state = self._new_state(1, trust, None, trust.files, stat)
        self._log_loaded(self._state)

    @property
    def state(self) -> TrustState:
        """The state as it is, without looking at the files."""
        return self._state

    def cache_counts(self) -> tuple[int, int, int]:
        """Cache hits and misses since start, over every trust state, and the current entries."""
        cache = self._state.cache
        hits, misses = self._retired
        return hits + cache.hits, misses + cache.misses, len(cache)

    def current(self) -> TrustState:
        """The state in force now: reloaded first if a file changed since it was read."""
        state = self._state
        if state.error is not None:
            if (
                file_state(state.files) != state.stat
                or self._monotonic() - state.loaded_at >= RETRY_INTERVAL_S
            ):
                return self.refresh("retry")
            return state
        if file_state(state.files) != state.stat:
            return self.refresh("files changed")
        return state

    def refresh(self, why: str = "refresh") -> TrustState:
        """Reload by content; a new state only when the configuration changed."""
        old = self._state
        try:
            trust, stat = self._load_stable()
        except Exception as exc:  # whatever stops the load, nothing verifies until it loads
            if not isinstance(exc, TrustFileError):
                exc = TrustFileError(f"{exc.__class__.__name__}: {exc}")
            if old.error == str(exc):
                self._state = self._replace_time(old)
                return self._state
            files = (self._path,)
            self._state = self._new_state(
                old.generation + 1, None, str(exc), files, file_state(files)
            )
            self.reloads += 1
            logger.error(
                "trust configuration unusable; every verification is denied until it loads",
                extra={"error": str(exc), "why": why},
            )
            return self._state
        if old.trust is not None and old.trust.version == trust.version:
            # Same bytes (touched, or rewritten identically): keep the state and its cache.
            self._state = TrustState(
                generation=old.generation,
                trust=old.trust,
                error=None,
                cache=old.cache,
                files=trust.files,
                stat=stat,
                loaded_at=self._monotonic(),
            )
            return self._state
        self._state = self._new_state(old.generation + 1, trust, None, trust.files, stat)
        self.reloads += 1
        self._log_loaded(self._state, why)
        return self._state

    def _load_stable(self) -> tuple[Trust, FileState]:
        # Stat between two reads that agree: then the stat describes those bytes,
        # and any later write changes what stat reports.
        trust = self._loader(self._path)
        for _ in range(_STABLE_READS):
            stat = file_state(trust.files)
            again = self._loader(self._path)
            if again.version == trust.version and again.files == trust.files:
                return trust, stat
            trust = again
        raise TrustFileError(f"{self._path} keeps changing while it is read")

    def _new_state(
        self,
        generation: int,
        trust: Trust | None,
        error: str | None,
        files: tuple[Path, ...],
        stat: FileState,
    ) -> TrustState:
        old = getattr(self, "_state", None)
        if old is not None:
            self._retired = (self._retired[0] + old.cache.hits, self._retired[1] + old.cache.misses)
        return TrustState(
            generation=generation,
            trust=trust,
            error=error,
            cache=VerifiedTokenCache(self._cache_size),
            files=files,
            stat=stat,
            loaded_at=self._monotonic(),
        )

    def _replace_time(self, state: TrustState) -> TrustState:
        return TrustState(
            generation=state.generation,
            trust=state.trust,
            error=state.error,
            cache=state.cache,
            files=state.files,
            stat=file_state(state.files),
            loaded_at=self._monotonic(),
        )

    @staticmethod
    def _log_loaded(state: TrustState, why: str = "start") -> None:
        trust = state.trust
        assert trust is not None
        logger.info(
            "trust configuration loaded",
            extra={
                "why": why,
                "version": trust.version[:16],
                "generation": state.generation,
                "issuers": sorted(trust.issuers),
                "attestors": sorted(trust.attestors),
                "measurements": len(trust.allowed_measurements),
            },
        )
        for note in trust.notes:
            logger.warning("trust configuration: %s", note)
