"""MLflow for a project: where runs and registered models live, with nothing sent over the network.

Default: a SQLite database `<root>/.twin/mlflow.db` and artifacts under `<root>/.twin/mlartifacts`;
`registry.tracking_uri` names a tracking server instead (its artifact store is then the server's).
mlflow is imported here only, inside functions: it is heavy and `twin --help` must stay instant.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


@dataclass
class Tracking:
    """An MLflow client bound to one project's tracking/registry URI and experiment."""

    root: Path
    uri: str
    experiment: str
    client: Any  # mlflow.MlflowClient

    @property
    def local(self) -> bool:
        return self.uri.startswith("sqlite:")

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = (self.root / ".twin" / ARTIFACTS_DIR).resolve().as_uri() if self.local else None
        return self.client.create_experiment(self.experiment, artifact_location=location)


def quiet_mlflow() -> None:
    """No telemetry, no progress bars, no INFO chatter from mlflow or its database migrations."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # keeps `--json` stdout clean
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "sqlalchemy", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*[Mm]odel [Rr]egistry.*")


def tracking_uri(root: Path, config: TwinConfig | None = None) -> str:
    if config is not None and config.registry.tracking_uri:
        return config.registry.tracking_uri
    return f"sqlite:///{(root / '.twin' / DB_FILE).resolve()}"


def open_tracking(root: Path, config: TwinConfig | None = None) -> Tracking:
    """The project's MLflow client (the SQLite database is created on first use)."""
    quiet_mlflow()
    root = Path(root).resolve()
    uri = tracking_uri(root, config)
    if uri.startswith("sqlite:"):
        (root / ".twin").mkdir(parents=True, exist_ok=True)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as e:  # a bad URI or an unreadable database
        raise TwinError(f"registry: cannot open MLflow at {uri}: {e}") from e
    experiment = config.registry.experiment if config is not None else "llmtwin"
    return Tracking(root=root, uri=uri, experiment=experiment, client=client)
