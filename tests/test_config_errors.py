"""A bad twin.yaml, --set value or init target is one `error:` line on stderr and exit 2, never a traceback.

Every case runs the real `twin` console script in a subprocess; none loads a model (the error
comes before `status` reads the store).
"""

from __future__ import annotations

import errno
import os

import pytest


def _one_line_error(proc, *fragments):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _project(root, content: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "twin.yaml").write_bytes(content)
    return root


# (id, twin.yaml bytes, fragments the one error line must hold besides the file's path)
YAML_CASES = [
    # PyYAML raises ValueError (not YAMLError) building an impossible date
    ("impossible-date", b"seed: 1\nname: 2024-02-30\n",
     ["name: '2024-02-30' is not a valid date", "day is out of range", "quote it", "(line 2)"]),
    ("int-tag", b"seed: !!int abc\n", ["seed: 'abc' is not an integer", "(line 1)"]),
    ("empty-int-tag", b"seed: !!int ''\n", ["seed: '' is not an integer"]),  # IndexError inside PyYAML
    ("float-tag", b"llm:\n  temperature: !!float warm\n", ["llm.temperature: 'warm' is not a number", "(line 2)"]),
    ("bool-tag", b"retrieval:\n  merge: !!bool maybe\n", ["retrieval.merge: 'maybe' is not a boolean", "(line 2)"]),  # KeyError
    ("timestamp-tag", b"name: !!timestamp soon\n", ["name: 'soon' is not a valid date"]),  # AttributeError
    ("list-item-tag", b"retrieval:\n  transforms: [hyde, !!int x]\n", ["retrieval.transforms[1]: 'x' is not an integer"]),
    ("too-many-digits", b"seed: " + b"1" * 5000 + b"\n", ["seed:", "too many digits"]),  # int() digit limit
    ("not-utf8", b"seed: 1\nname: caf\xe9\n", ["line 2, column 10: not UTF-8 text (byte 0xe9)"]),
    ("nested-too-deep", b"seed: " + b"[" * 3000 + b"]" * 3000 + b"\n", ["nested too deeply"]),  # RecursionError
    # YAML syntax errors were one TwinError, but PyYAML's multi-line text with a caret under the line
    ("syntax-error", b"seed: 1\nllm: [\n", ["line 3, column 1: expected the node content"]),
    ("bad-indent", b"seed: 1\n  bad: 2\n", ["line 2, column 6: mapping values are not allowed here"]),
    ("control-character", b"name: a\x07b\n", ["line 1, column 8: character U+0007 is not allowed"]),
    ("python-tag", b"seed: !!python/object:os.system x\n", ["seed: could not determine a constructor", "(line 1)"]),
    ("two-documents", b"seed: 1\n---\nseed: 2\n", ["line 2", "expected a single document"]),
    # pydantic: one readable message per field, with the field as written and its line
    ("wrong-type", b"name: t\nseed: abc\n", ["twin.yaml: seed: Input should be a valid integer", "(line 2)"]),
    ("unknown-field", b"llm:\n  provider: hf\n  nosuch: 1\n", ["llm.nosuch: unknown field (line 3)"]),
    ("section-not-a-mapping", b"llm: 3\n", ["llm: expected a section of `field: value` lines (line 1)"]),
    ("two-errors", b"retrieval:\n  k: 0\n  transforms: [nope]\n",
     ["retrieval.k: Input should be greater than or equal to 1 (line 2); retrieval.transforms[0]:", "(line 3)"]),
    ("date-for-text", b"name: 2024-01-01\n", ["name: Input should be a valid string; quote it", "(line 1)"]),
    ("on-as-key", b"on: 3\n", ["on: keys must be text (line 1)"]),  # YAML 1.1 reads the key `on` as true
    # the top level must be a mapping: `false` and `0` used to be taken as an empty config
    ("top-level-false", b"false\n", ["expected settings (`field: value` lines) at the top level, found a boolean"]),
    ("top-level-list", b"- seed: 1\n", ["at the top level, found a list"]),
]


@pytest.mark.parametrize("content,fragments", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_bad_twin_yaml_is_one_line_naming_file_and_field(tmp_path, twin_cli, content, fragments):
    root = _project(tmp_path / "proj", content)
    _one_line_error(twin_cli("--project", root, "status"), f"{root / 'twin.yaml'}: ", *fragments)


def test_bad_twin_yaml_found_upwards_is_one_line(tmp_path, twin_cli):
    root = _project(tmp_path / "proj", b"name: 2024-02-30\n")
    (root / "sub").mkdir()
    _one_line_error(twin_cli("status", cwd=root / "sub"), f"{root / 'twin.yaml'}: name:")


def test_utf16_twin_yaml_with_bom_is_read(tmp_path, twin_cli):
    """Windows editors save UTF-16 with a byte order mark: read, not 'not UTF-8'."""
    root = _project(tmp_path / "proj", "seed: abc\n".encode("utf-16"))
    _one_line_error(twin_cli("--project", root, "status"), "seed: Input should be a valid integer, unable to parse string as an integer (line 1)")


SET_CASES = [
    ("unclosed-list", "seed=[", ["--set 'seed=[': expected the node content"]),
    ("impossible-date", "name=2024-02-30", ["--set 'name=2024-02-30': '2024-02-30' is not a valid date"]),
    ("bool-tag", "retrieval.merge=!!bool maybe", ["--set 'retrieval.merge=!!bool maybe': 'maybe' is not a boolean"]),
    ("int-tag", "seed=!!int x", ["--set 'seed=!!int x': 'x' is not an integer"]),
    ("control-character", "name=a\x07b", ["--set", "character U+0007 is not allowed"]),
    ("nested-too-deep", "seed=" + "[" * 3000, ["--set 'seed=[[[", "...': nested too deeply"]),
    ("no-field", "=3", ["--set '=3': expected section.field=value"]),
    ("nested-field", "llm={provider: nope}", ["llm={'provider': 'nope'}: llm.provider: Input should be"]),
]


@pytest.mark.parametrize("item,fragments", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_bad_set_value_is_one_line(tmp_path, twin_cli, item, fragments):
    root = _project(tmp_path / "proj", b"seed: 1\n")
    line = _one_line_error(twin_cli("--project", root, "--set", item, "status"), *fragments)
    assert len(line) < 300


def test_init_on_a_file_is_one_line(tmp_path, twin_cli):
    (tmp_path / "afile").write_text("x")
    _one_line_error(twin_cli("init", tmp_path / "afile"), f"{tmp_path / 'afile'}: exists and is not a directory")
    _one_line_error(twin_cli("init", tmp_path / "afile" / "sub"), "a parent is a file, not a directory")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / ".twin").write_text("x")  # the state folder's name taken by a file
    _one_line_error(twin_cli("init", tmp_path / "proj"), f"{tmp_path / 'proj' / '.twin'}: exists and is not a directory")


def test_init_keeps_a_broken_twin_yaml_and_names_it(tmp_path, twin_cli):
    root = _project(tmp_path / "proj", b"seed: !!int abc\n")
    _one_line_error(twin_cli("init", root), f"{root / 'twin.yaml'}: seed: 'abc' is not an integer")
    assert (root / "twin.yaml").read_bytes() == b"seed: !!int abc\n"


def test_save_config_is_atomic(tmp_path, monkeypatch):
    """twin.yaml is written to a temporary file in its folder, fsynced, then renamed over the old one:
    a failure part-way leaves the old file whole and no temporary file behind."""
    from llmtwin.config import TwinConfig, load_config, save_config
    from llmtwin.errors import TwinError

    path = tmp_path / "twin.yaml"
    save_config(TwinConfig(name="old"), path)
    old = path.read_bytes()
    os.chmod(path, 0o640)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(TwinError, match=r"twin\.yaml: cannot write: No space left on device"):
        save_config(TwinConfig(name="new"), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin.yaml"]
    monkeypatch.undo()

    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((str(a), str(b))), real_replace(a, b))[1])
    save_config(TwinConfig(name="new"), path)
    assert load_config(path).name == "new"
    assert len(replaced) == 1 and replaced[0][1] == str(path) and os.path.dirname(replaced[0][0]) == str(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o640  # the file's permissions are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin.yaml"]
