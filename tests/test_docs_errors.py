"""The error texts the guides quote are texts the code can print, so a reader who searches the
docs for the line on their screen finds it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs").rglob("*.md"))
SOURCES = [ROOT / d for d in ("src", "library", "module_utils", "roles", "playbooks", "molecule")]
# Quoted texts printed by the tools under the project, not by it: where each comes from.
NOT_OURS = {
    "UNREACHABLE! ... Connection refused": "ansible's ssh connection",
    "Host key verification failed": "ssh",
    "Decryption failed (no vault secrets were found that could decrypt)": "ansible-vault",
    "supervisorctl ... refused connection": "supervisorctl",
    "CERTIFICATE_VERIFY_FAILED": "pip (Python's ssl module)",
    "Torch not compiled with CUDA enabled": "torch",
    "Failed to find C compiler": "Triton",
    "libcuda.so cannot found": "Triton",
    'InvalidPasswordError: password authentication failed for user "myca_mas"': "asyncpg, for PostgreSQL",
}
# Prefixes the entry points put before an error text (f"lab: {exc}" and the like).
PREFIXES = ("lab: ", "myca-ops: ", "prereqs: ", "wheelhouse: ", "myca-moshi: ", "fatal: ", "FAILED! => ")


COMMANDS = ("make ", "journalctl ", "ldconfig ", "service ", "sudo ", "apt-get ", "ansible", "docker ", ".venv/")


def failure_quotes(guide: Path) -> list[str]:
    """The error texts quoted in a guide's sections about failures (headings with "fail" in them):
    code spans of four words or more that are not commands."""
    sections = re.split(r"^#+ ", guide.read_text(), flags=re.M)
    text = " ".join(s for s in sections if "fail" in s.split("\n", 1)[0].lower())
    spans = (re.sub(r"\s+", " ", q) for q in re.findall(r"`([^`]+)`", text))
    return [q for q in spans if q.count(" ") >= 3 and not q.startswith(COMMANDS)]


def corpus() -> str:
    texts = [p.read_text(errors="replace") for d in SOURCES for p in d.rglob("*") if p.suffix in (".py", ".yml", ".j2")]
    # Source lines join long messages across lines: compare with the whitespace folded.
    return re.sub(r"\s+", " ", "\n".join(texts)).replace("`", "")


def fragments(quote: str) -> list[str]:
    """The literal pieces of a quote: split at elisions (... or …), at URLs and figures (values that
    vary), at parentheses and at ": " (messages are assembled from parts joined by them); pieces too
    short to mean anything dropped."""
    for prefix in PREFIXES:
        quote = quote.removeprefix(prefix)
    pieces = re.split(r"\.\.\.|…|\S+://\S+|\d+(?:\.\d+)?|: |[()]", quote)
    return [p.strip(" .,;") for p in pieces if len(p.strip(" .,;")) >= 8]


QUOTES = [(guide, quote) for guide in GUIDES for quote in failure_quotes(guide) if quote not in NOT_OURS]


def test_the_guides_quote_errors():
    assert len(QUOTES) >= 5, "the failures sections quote no errors: this test would check nothing"


@pytest.mark.parametrize("guide, quote", QUOTES, ids=[f"{g.stem}:{q[:40]}" for g, q in QUOTES])
def test_each_quoted_error_is_printed_by_the_code(guide, quote):
    code = CORPUS
    missing = [piece for piece in fragments(quote) if re.sub(r"\s+", " ", piece) not in code]
    assert not missing, f"{guide.relative_to(ROOT)} quotes `{quote}`, but the code prints no {missing}"


CORPUS = corpus()
