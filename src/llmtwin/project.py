"""The project directory: `twin.yaml` plus the `.twin/` state folder, found like git finds `.git`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmtwin.config import TwinConfig, load_config, save_config, write_text_atomic
from llmtwin.errors import ProjectNotFound, TwinError

CONFIG_FILE = "twin.yaml"
STATE_DIR = ".twin"


@dataclass
class Project:
    root: Path
    config: TwinConfig

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def store_dir(self) -> Path:
        path = Path(self.config.store.path)
        return path if path.is_absolute() else self.root / path

    @property
    def traces_dir(self) -> Path:
        return self.state_dir / "traces"

    def source_name(self, path: Path) -> str:
        """How a file is named in the store: relative to the project root (`../docs/a.md` outside it)."""
        return Path(os.path.relpath(path.resolve(), self.root)).as_posix()

    def source_path(self, source: str) -> Path:
        path = Path(source)
        return path if path.is_absolute() else self.root / path


def init_project(directory: Path, config: TwinConfig | None = None) -> Project:
    """Create twin.yaml and .twin/ in `directory` (created if missing). Existing config is kept."""
    root = Path(directory).resolve()
    _make_dir(root)
    config_path = root / CONFIG_FILE
    if config_path.exists():
        project = Project(root, load_config(config_path))
    else:
        project = Project(root, config or TwinConfig(name=root.name or "twin"))
        save_config(project.config, config_path)
    for sub in (project.state_dir, project.traces_dir):
        _make_dir(sub)
    gitignore = project.state_dir / ".gitignore"
    if not gitignore.exists():
        write_text_atomic(gitignore, "*\n")
    return project


def _make_dir(path: Path) -> None:
    """mkdir -p, where a file in the way or a denied folder is a TwinError naming the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise TwinError(f"{path}: exists and is not a directory") from e
    except NotADirectoryError as e:
        raise TwinError(f"{path}: cannot create it: a parent is a file, not a directory") from e
    except OSError as e:
        raise TwinError(f"{path}: cannot create directory: {e.strerror or e}") from e


def _has_config(directory: Path) -> bool:
    try:
        return (directory / CONFIG_FILE).is_file()
    except OSError as e:  # e.g. a folder on the way that may not be read
        raise TwinError(f"{directory / CONFIG_FILE}: cannot read: {e.strerror or e}") from e


def find_project(explicit: Path | None = None, start: Path | None = None) -> Project:
    """`--project DIR` if given, else the nearest directory upwards holding twin.yaml."""
    if explicit is not None:
        root = explicit.resolve()
        if not _has_config(root):
            raise ProjectNotFound(f"{root}: no {CONFIG_FILE} here; run `twin init {explicit}` first")
        return Project(root, load_config(root / CONFIG_FILE))
    try:
        here = (start or Path.cwd()).resolve()
    except FileNotFoundError as e:
        raise ProjectNotFound("the current directory no longer exists; cd to the project or pass --project DIR") from e
    for candidate in (here, *here.parents):
        if _has_config(candidate):
            return Project(candidate, load_config(candidate / CONFIG_FILE))
    raise ProjectNotFound(
        f"no {CONFIG_FILE} in {here} or any parent; run `twin init` or pass --project DIR"
    )


def open_project(directory: Path | str) -> Project:
    """The Python API's entry: an existing project, or a new one if the directory has none."""
    root = Path(directory)
    if (root / CONFIG_FILE).is_file():
        return find_project(root)
    if root.exists() and not root.is_dir():
        raise TwinError(f"{root}: not a directory")
    return init_project(root)
