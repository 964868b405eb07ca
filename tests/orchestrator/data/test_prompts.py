"""Reading a prompt file: one prompt a line or a YAML list, UTF-8, and what is refused."""

from __future__ import annotations

import pytest

from orchestrator.data.prompts import PromptFileError, is_prompt_file, read_prompts


def test_one_prompt_a_line_blank_lines_skipped_duplicates_kept(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\ufeffa cat\n\n  a dog on grass  \r\na cat\n", encoding="utf-8")
    assert read_prompts(path) == ["a cat", "a dog on grass", "a cat"]
    assert is_prompt_file(str(path)) and not is_prompt_file(str(tmp_path))
    assert not is_prompt_file("digits")


def test_a_yaml_list(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("- a cat\n- 'a caf\u00e9: at night'\n", encoding="utf-8")
    assert read_prompts(path) == ["a cat", "a caf\u00e9: at night"]


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("empty.txt", b"", "holds no prompts"),
        ("blank.txt", b"\n \n\t\n", "holds no prompts"),
        (
            "latin1.txt",
            "caf\u00e9\n".encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 at offset 3)",
        ),
        ("map.yaml", b"a: b\n", "must be a YAML list of non-empty strings"),
        ("numbers.yml", b"- 1\n- 2\n", "must be a YAML list of non-empty strings"),
        ("bad.yaml", b"- [unclosed\n", "is not valid YAML"),
        ("null.yaml", b"~\n", "holds no prompts"),
    ],
)
def test_refused_in_one_line_naming_the_file(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PromptFileError) as info:
        read_prompts(path)
    message = str(info.value)
    assert says in message and f"data.source ({path})" in message and "\n" not in message


def test_too_large(tmp_path, monkeypatch):
    import orchestrator.data.prompts as prompts

    monkeypatch.setattr(prompts, "MAX_PROMPT_BYTES", 10)
    path = tmp_path / "big.txt"
    path.write_text("a prompt longer than ten bytes\n")
    with pytest.raises(PromptFileError, match="may hold at most 10"):
        read_prompts(path)
