"""ModelStore: trained bundles on disk as LightGBM text and XGBoost UBJSON plus JSON metadata.

``ModelStore.save`` is crash-safe: everything is written and fsynced in a temporary directory,
renamed into place, and only then does the ``current`` pointer switch (temp file + fsync +
os.replace). A kill at any moment leaves the previous model current and complete. Loading a model
file never runs code (no pickles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import xgboost as xgb

from app.ai.calibration import ConfidenceCalibrator
from app.ai.ensemble import (
    _MEMBER_SUFFIX,
    _MEMBER_TYPES,
    Ensemble,
    LightGBMMember,
    Member,
    ModelBundle,
    XGBoostMember,
)
from app.ai.features import trained_feature_set

logger = logging.getLogger(__name__)


class ModelStoreError(RuntimeError):
    """The store's files are missing or inconsistent."""


_VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$")
_POINTER = "current"
_TEMP_PREFIXES = (".tmp-", ".current-", ".trash-")
#: Temporary leftovers older than this belong to a dead writer and may be removed.
_STALE_TEMP_SECONDS = 3600.0

_CACHE: dict[str, tuple[str, ModelBundle]] = {}
_CACHE_LOCK = threading.Lock()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _library_versions() -> dict[str, str]:
    return {
        "lightgbm": lgb.__version__,
        "xgboost": xgb.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def _serialise(bundle: ModelBundle) -> dict[str, bytes]:
    """Every file of a version except meta.json, by relative path."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "mode": bundle.mode,
        "feature_columns": bundle.feature_columns,
        "ensembles": {},
    }
    for index, (key, ens) in enumerate(sorted(bundle.ensembles.items())):
        folder = f"ensembles/e{index:03d}"
        members = []
        for m_index, member in enumerate(ens.members):
            if not isinstance(member, (LightGBMMember, XGBoostMember)):
                raise TypeError(f"cannot store member type {type(member).__name__}")
            name = f"{folder}/m{m_index:02d}{_MEMBER_SUFFIX[member.kind]}"
            files[name] = member.to_bytes()
            members.append(
                {
                    "kind": member.kind,
                    "file": name,
                    "seed": member.seed,
                    "subsample": member.subsample,
                    "best_iteration": member.best_iteration,
                }
            )
        manifest["ensembles"][key] = {
            "members": members,
            "feature_names": ens.feature_names,
            "calibrator": ens.calibrator.to_dict(),
            "label_clip": list(ens.label_clip) if ens.label_clip else None,
            "validation": ens.validation,
            "params": ens.params,
            "seed": ens.seed,
        }
    files["bundle.json"] = _json_bytes(manifest)
    return files


def _deserialise(root: Path) -> ModelBundle:
    manifest = json.loads((root / "bundle.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    ensembles: dict[str, Ensemble] = {}
    for key, spec in manifest["ensembles"].items():
        ens = Ensemble(n_lgbm=1, n_xgb=0, params=spec["params"], seed=int(spec["seed"]))
        members: list[Member] = []
        for m in spec["members"]:
            cls = _MEMBER_TYPES[m["kind"]]
            section = spec["params"].get(m["kind"], {})
            member = cls(section, seed=int(m["seed"]), subsample=float(m["subsample"]))
            member.load_bytes((root / m["file"]).read_bytes())
            members.append(member)
        ens.members = members
        ens.feature_names = list(spec["feature_names"])
        ens.calibrator = ConfidenceCalibrator.from_dict(spec["calibrator"])
        clip = spec.get("label_clip")
        ens.label_clip = (float(clip[0]), float(clip[1])) if clip else None
        ens.validation = dict(spec.get("validation") or {})
        ensembles[key] = ens
    return ModelBundle(
        mode=manifest["mode"],
        feature_columns=list(manifest["feature_columns"]),
        ensembles=ensembles,
        metadata=meta,
        version=meta.get("version"),
    )


class ModelStore:
    """Versioned model artifacts under `models_dir` with an atomically switched `current`.

    Layout: ``<models_dir>/<version>/{meta.json, bundle.json, ensembles/eNNN/mNN.*}`` and a
    ``current`` file holding the live version. version = UTC timestamp + 8 hex of the content
    hash, so names sort by age. The newest `keep` versions (and always the current one) are kept.
    """

    def __init__(self, models_dir: str | Path, keep: int = 5) -> None:
        if keep < 2:
            raise ValueError("keep must be >= 2 so a reader of the previous version is safe")
        self.models_dir = Path(models_dir)
        self.keep = keep

    # --- writing ---
    def save(
        self,
        bundle: ModelBundle,
        extra_metadata: Mapping[str, Any] | None = None,
        *,
        promote: bool = True,
    ) -> str:
        """Write `bundle` as a new version and, with `promote`, make it current; returns the
        version (a challenger the gate rejected is kept for the record, not served)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        files = _serialise(bundle)
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        content_sha = digest.hexdigest()
        created = datetime.now(UTC)
        version = f"{created:%Y%m%dT%H%M%S.%fZ}-{content_sha[:8]}"
        meta = {
            **bundle.metadata,
            **dict(extra_metadata or {}),
            "version": version,
            "created_at": created.isoformat(),
            "mode": bundle.mode,
            "features": bundle.feature_columns,
            # Recorded even when a bundle's metadata lacks it: what live checks before trading.
            "feature_set": trained_feature_set(bundle.metadata),
            "content_sha256": content_sha,
            "libraries": _library_versions(),
            "format": {"lightgbm": "text model", "xgboost": "UBJSON", "calibration": "JSON"},
        }
        files["meta.json"] = _json_bytes(meta)

        tmp = self.models_dir / f".tmp-{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            dirs = {tmp}
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                dirs.update(p for p in path.parents if tmp in (p, *p.parents))
                _write_durable(path, data)
            for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(folder)
            os.rename(tmp, self.models_dir / version)
            _fsync_dir(self.models_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if promote:
            self._switch_current(version)
        self._prune()
        bundle.version = version
        bundle.metadata = meta
        logger.info("model %s saved (%s, %d ensembles)", version, bundle.mode, len(files))
        return version

    def mark_validated(self, version: str, at: datetime, detail: Mapping[str, Any]) -> None:
        """Record in `version`'s metadata that it just beat a fresh challenger on data it never
        saw: its age for MODEL_MAX_AGE_DAYS counts from `at` (atomic rewrite of meta.json)."""
        meta = self.metadata(version) or {}
        meta["validated_at"] = at.isoformat()
        meta["last_gate"] = dict(detail)
        folder = self.models_dir / version
        tmp = folder / f".meta-{secrets.token_hex(6)}"
        _write_durable(tmp, _json_bytes(meta))
        os.replace(tmp, folder / "meta.json")
        _fsync_dir(folder)

    def _switch_current(self, version: str) -> None:
        tmp = self.models_dir / f".current-{secrets.token_hex(6)}"
        _write_durable(tmp, f"{version}\n".encode())
        os.replace(tmp, self.models_dir / _POINTER)
        _fsync_dir(self.models_dir)

    def _prune(self) -> None:
        current = self.current_version()
        for version in self.versions()[: -self.keep]:
            if version == current:
                continue
            # Rename first so a half-deleted directory never looks like a version.
            trash = self.models_dir / f".trash-{version}-{secrets.token_hex(4)}"
            os.rename(self.models_dir / version, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for path in self.models_dir.iterdir():
            if not path.name.startswith(_TEMP_PREFIXES):
                continue
            try:
                if now - path.stat().st_mtime < _STALE_TEMP_SECONDS:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    # --- reading ---
    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.models_dir.iterdir()
            if _VERSION_RE.match(p.name) and (p / "meta.json").is_file()
        )

    def current_version(self) -> str | None:
        try:
            text = (self.models_dir / _POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(text):
            raise ModelStoreError(f"malformed model pointer {text!r} in {self.models_dir}")
        return text

    def metadata(self, version: str | None = None) -> dict[str, Any] | None:
        version = version or self.current_version()
        if version is None:
            return None
        path = self.models_dir / version / "meta.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelStoreError(f"model version {version} is missing") from exc
        return data

    def load(self, version: str) -> ModelBundle:
        if not _VERSION_RE.match(version):
            raise ModelStoreError(f"malformed model version {version!r}")
        root = self.models_dir / version
        if not (root / "meta.json").is_file():
            raise ModelStoreError(f"model version {version} is missing")
        return _deserialise(root)

    def load_current(self) -> ModelBundle | None:
        """The current bundle, loaded once per process and reloaded when the pointer moves."""
        version = self.current_version()
        if version is None:
            return None
        key = str(self.models_dir.resolve())
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        bundle = self.load(version)
        with _CACHE_LOCK:
            _CACHE[key] = (version, bundle)
        return bundle

    def is_stale(self, max_age_days: int, now: datetime | None = None) -> bool:
        """True when there is no current model or it was created (or last re-validated by the
        champion / challenger gate) more than `max_age_days` ago."""
        meta = self.metadata()
        if meta is None:
            return True
        created = max(
            datetime.fromisoformat(str(meta[key]))
            for key in ("created_at", "validated_at")
            if meta.get(key)
        )
        return (now or datetime.now(UTC)) - created > timedelta(days=max_age_days)
