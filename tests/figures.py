"""Every figure in the docs comes from a file under results/: extract, normalise, look up.

A figure is a number in the prose of README.md, SECURITY.md or docs/*.md, outside fenced code
blocks, inline code and link targets. It is sourced when some number in a results file, rounded to
the figure's own decimals, equals it, directly or as the same quantity in another unit (a fraction
as a percentage, seconds as milliseconds, bytes as MB). Numbers that are not measurements (the
28 x 28 contract, versions, ports, small counts in prose) are skipped by the rules in
:func:`is_figure`, each with its reason.

A figure must be in the results file its paragraph cites (see :func:`citations`), not merely
somewhere under results/, so a number copied from the wrong run is caught; a figure in a passage
that cites no results file must be in some results file.

Code comments and docstrings of the product (:data:`PRODUCT`) carry no figures at all: a measured
quantity there (a number with a unit of time, size, rate or share, :func:`code_figures`) goes stale
silently, so they name the results file or the docs section instead.

``python -m tests.figures`` prints the unsourced figures of the repository and the figures in the
product's comments and docstrings, with their lines; ``python -m tests.figures --sources`` prints every
document figure with the results files that hold it.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A number as docs write it: 1,024 / 0.6 / 88.9 / 290 (signs and units are separate tokens).
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
HTML_TAG = re.compile(r"<[^>]+>")
# Versions (2.14.1, v1.4, Python 3.11), dates and times, CVE and issue numbers, hex, file names with digits.
NOT_FIGURES = re.compile(
    r"\bv?\d+\.\d+\.\d+(?:\.\d+)?\b"            # x.y.z versions
    r"|\b(?:Python|PyTorch|TensorFlow|TF|torch|Keras|BentoML|ONNX|opset|CUDA|Ubuntu|Debian|ORT|Runtime|Optuna"
    r"|onnxruntime|onnxruntime-gpu|tf2onnx|Triton|Chromium|Playwright|Pillow|numpy|NumPy)[ -]v?\d+(?:\.\d+)*"
    r"|\bglibc (?:≥ |>= )?\d+\.\d+"  # a C library version
    r"|\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?"  # dates
    r"|\bCVE-\d{4}-\d+|#\d+\b|\bissue \d+"
    r"|\b0x[0-9a-fA-F]+\b"
    r"|\b[\w-]*\d[\w-]*\.(?:py|md|json|png|jpg|jpeg|txt|onnx|csv|gz|yaml)\b"
    r"|\b(?:port|ports|localhost:|:)\s?\d{4,5}\b"  # ports
    r"|\bH100|\bH200|\bA100|\bEPYC \d+\w*|\bfp(?:16|32)|\bint8|\bx86[-_]64|\bsha256|\bSHA-256|\bUTF-8|\bIPv[46]"
    r"|\bIDX\d?|\bidx\d-ubyte|\bt10k|\bRFC \d+|\bHTTP/\d(?:\.\d)?|\b[1-5]xx\b"
    r"|\bp\d{2}(?:\.\d)?\b|\b\d+(?:st|nd|rd|th)\b"
    r"|\bet al\., \d{4}\b"  # the year of a cited paper
)

# Numbers that are facts of the design, not measurements. Each is listed with why.
ALLOWED = {
    "28": "the image side of the input contract (28 x 28)",
    "784": "28 x 28 pixels",
    "10": "the ten classes of Fashion-MNIST",
    "60,000": "the training set's size (the dataset's definition)",
    "70,000": "the dataset's size",
    "10,000": "the test set's size",
    "255": "the pixel range",
    "3000": "the default port", "3001": "the default probe port",
    "200": "an HTTP status", "400": "an HTTP status", "404": "an HTTP status", "406": "an HTTP status",
    "401": "an HTTP status", "403": "an HTTP status",
    "409": "an HTTP status",
    "413": "an HTTP status", "415": "an HTTP status", "422": "an HTTP status", "429": "an HTTP status",
    "500": "an HTTP status", "502": "an HTTP status", "503": "an HTTP status", "504": "an HTTP status",
    "1,024": "the per-request image limit (FASHION_MAX_IMAGES) and batch sizes of the sweep",
    "256": "the batcher's batch limit and a batch size of the sweep",
    "16,384": "the queue limit (FASHION_MAX_QUEUED_IMAGES) and the TIFF chunk limit",
    "100,000": "the task image limit (FASHION_MAX_TASK_IMAGES)",
    "8": "8 MiB body limit (FASHION_MAX_BODY_BYTES)",
    "4": "the 4-megapixel decode limit",
    "4,000,000": "the same decode limit in pixels (fashion.imaging.MAX_PIXELS)",
    "2": "2 cores of the CI machine",
}
SMALL_COUNT = 12  # integers up to this are counts in prose ("two frameworks", "step 3"), not measurements


@dataclass(frozen=True)
class Figure:
    """One number in a document: where, as written, and its value."""

    path: Path
    line: int
    text: str
    value: float
    decimals: int


def prose(markdown: str) -> str:
    """``markdown`` with code (fenced and inline), link targets and HTML tags blanked, lines kept."""
    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    for pattern in (FENCE, INLINE_CODE, LINK_TARGET, HTML_TAG, NOT_FIGURES):
        markdown = pattern.sub(blank, markdown)
    return markdown


def is_figure(text: str, value: float, decimals: int) -> bool:
    """Whether a number needs a source: not on the allow-list, not a small whole count."""
    if text in ALLOWED or text.replace(",", "") in ALLOWED:
        return False
    whole = decimals == 0 and value.is_integer()
    # Powers of two from 64 up are settings in these docs (batch sizes, chunk sizes, matrix widths), not results.
    power_of_two = whole and value >= 64 and int(value) & (int(value) - 1) == 0
    return not (whole and value <= SMALL_COUNT) and not power_of_two


def figures(path: Path) -> list[Figure]:
    """Every figure in the prose of the document at ``path``."""
    found = []
    for number, line in enumerate(prose(path.read_text(encoding="utf-8")).splitlines(), 1):
        for match in NUMBER.finditer(line):
            whole, fraction = match.group(1), match.group(2) or ""
            value = float(whole.replace(",", "") + fraction)
            decimals = max(0, len(fraction) - 1)
            if is_figure(match.group(0), value, decimals):
                found.append(Figure(path, number, match.group(0), value, decimals))
    return found


# The same quantity in other units: percent of a fraction, ms of s, s of ms, MB and MiB of bytes.
SCALES = (1, 100, 1e3, 1e-3, 1e-6, 1 / 2**20)


def result_files(results: Path) -> list[Path]:
    """The text files under ``results`` (JSON, Markdown, text, CSV)."""
    return [p for p in sorted(results.rglob("*"))
            if p.is_file() and p.suffix.lower() in (".md", ".json", ".txt", ".csv")]


def values_of(path: Path) -> list[float]:
    """Every number in one results file."""
    values = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for match in re.finditer(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?", text):
        try:
            values.append(abs(float(match.group(0).replace(",", ""))))
        except ValueError:
            continue
    return values


def result_values(results: Path) -> list[float]:
    """Every number in the text files under ``results``."""
    return [value for path in result_files(results) for value in values_of(path)]


def sourced(values: list[float]) -> set[tuple[int, str]]:
    """``(decimals, rounded text)`` for every result value in every unit, as docs would round it."""
    keys = set()
    for value in set(values):
        for scale in SCALES:
            scaled = value * scale
            if scaled >= 1e12:
                continue
            for decimals in range(5):
                keys.add((decimals, f"{scaled:.{decimals}f}"))
    return keys


# A citation of a results file in a document: a relative link or a path in prose or code.
CITATION = re.compile(r"results/([\w.\-/]*)")
HEADING = re.compile(r"^#{1,6}\s")
LIST_ITEM = re.compile(r"^\s*(?:[*+-]|\d+[.)])\s")


def citations(markdown: str) -> dict[int, list[str]]:
    """The results files cited in force at each line (1-based) of ``markdown``.

    A paragraph (a run of non-blank lines, or one list item) is bound by its own citations;
    one without any inherits those of the last paragraph before it in the same section, so a table
    under "measured by ..., in results/x.md" must come from x.md. A heading starts a section with none.
    """
    lines = markdown.splitlines()
    scope: dict[int, list[str]] = {}
    inherited: list[str] = []
    paragraph: list[int] = []
    in_fence = False

    def close() -> None:
        nonlocal inherited
        # A sentence's full stop after the file name is not part of it.
        own = [name.rstrip(".") for n in paragraph for name in CITATION.findall(lines[n - 1])]
        inherited = own or inherited
        scope.update({n: inherited for n in paragraph})
        paragraph.clear()

    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        if not in_fence and HEADING.match(line):
            close()
            inherited = []
            continue
        if line.strip():
            if not in_fence and LIST_ITEM.match(line):
                close()
            paragraph.append(number)
        else:
            close()
    close()
    return scope


def names(citation: str, relative: str) -> bool:
    """Whether a citation (the text after ``results/``) names the results file at ``relative``.

    It names a file (with its siblings in other formats: x.md and x.json), a folder, or, when a
    placeholder follows it (``results/peers-<machine>.md``), every file with that prefix.
    """
    folder = citation.rstrip("/")
    if not folder:
        return True  # "results/" itself
    if citation.endswith(("-", "_")):
        return relative.startswith(citation)
    return (relative.startswith(folder + "/")
            or Path(relative).with_suffix("").as_posix() == Path(folder).with_suffix("").as_posix())


def cited_files(citations: list[str], results: Path) -> list[Path]:
    """The files under ``results`` that any of ``citations`` names."""
    return [path for path in result_files(results)
            if any(names(c, path.relative_to(results).as_posix()) for c in citations)]


def lookup_key(figure: Figure) -> tuple[int, str]:
    """The figure as :func:`sourced` keys result values: its decimals and its text at those decimals."""
    return figure.decimals, f"{figure.value:.{figure.decimals}f}"


def unsourced(documents: list[Path], results: Path) -> list[Figure]:
    """The figures of ``documents`` that their sources do not hold.

    A figure with a citation in force (see :func:`citations`) must be in one of the cited files; a
    figure with none must be in some file under ``results``.
    """
    everywhere = sourced(result_values(results))
    held: dict[tuple[str, ...], set[tuple[int, str]]] = {}
    missing = []
    for doc in documents:
        scope = citations(doc.read_text(encoding="utf-8"))
        for figure in figures(doc):
            cited = tuple(scope.get(figure.line, ()))
            if cited and cited not in held:
                held[cited] = sourced([v for path in cited_files(list(cited), results) for v in values_of(path)])
            if lookup_key(figure) not in (held[cited] if cited else everywhere):
                missing.append(figure)
    return missing


def documents(repo: Path = REPO) -> list[Path]:
    """The documents whose figures must be sourced: README.md, SECURITY.md, docs/*.md."""
    return [p for p in [repo / "README.md", repo / "SECURITY.md", *sorted((repo / "docs").glob("*.md"))]
            if p.exists()]


def sources(documents: list[Path], results: Path) -> dict[Figure, list[str]]:
    """Each figure of ``documents`` with the results files that hold it, to audit matches by chance."""
    held = {path.relative_to(results).as_posix(): sourced(values_of(path)) for path in result_files(results)}
    return {f: [name for name, keys in held.items() if lookup_key(f) in keys]
            for doc in documents for f in figures(doc)}


# The packages that ship or that users run: their comments and docstrings carry no figures.
PRODUCT = ("fashion", "training", "export", "service", "clients")
# Code spans in docstrings (reStructuredText): ``x``.
RST_CODE = re.compile(r"``[^`\n]*``")
# A unit that makes a number a measured quantity (time, size, rate, share, ratio).
MEASURE_UNIT = re.compile(r"(?:-\d[\d,.]*)?\s?(?:(?:ms|s|µs|us|ns|seconds?|minutes?|hours?|MB|KB|GB|MiB|KiB|GiB|MP"
                          r"|req/s|requests/s|images/s|rps|bytes)\b|%|x\b(?!\s?\d)|×|\s?times\b)")

# Quantities with units that are facts of the design, not measurements. Each is listed with why.
CODE_FACTS = {
    "8MiB": "the body limit (FASHION_MAX_BODY_BYTES)", "8MB": "the same body limit",
    "4MP": "the decode limit (fashion.imaging.MAX_PIXELS)",
    "5%": "Fashion-MNIST's own trimming rule (within 5% of the corner colour)",
    "16bytes": "the IDX header", "2GB": "protobuf's message limit", "45bytes": "one ANSWER_DTYPE record",
    "3MiB": "a chunk of 1,024 images as float32", "100%": "an unsharp mask's full amount, a setting",
    "95.5%": "the detector's validation target (fashion.ood.TARGET_TPR)", "95%": "the detector's test target",
    "20%": "the one-cycle schedule's warm-up share", "30s": "the request timeout (traffic.timeout)",
    "10s": "the liveness default (FASHION_LIVENESS_STALE_S)", "784bytes": "one 28 x 28 uint8 image",
}


def product_files(repo: Path = REPO) -> list[Path]:
    """The product's Python files (:data:`PRODUCT`)."""
    return [path for package in PRODUCT for path in sorted((repo / package).rglob("*.py"))]


def code_comments(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every comment and every docstring line of a Python ``source``."""
    found = [(token.start[0], token.string) for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                found.extend((node.body[0].lineno + i, line) for i, line in enumerate(doc.splitlines()))
    return sorted(found)


def code_figures(path: Path) -> list[Figure]:
    """The measured figures in the comments and docstrings of the Python file at ``path``.

    A number is one when a unit of measure follows it (``2 ms``, ``300 MB``, ``95.5%``, ``350-430 ms``) and it
    is not a fact of the design (:data:`CODE_FACTS`); numbers in code spans are not.
    """
    found = []
    for line, text in code_comments(path.read_text(encoding="utf-8")):
        text = prose(RST_CODE.sub(lambda match: " " * len(match.group(0)), text))
        for match in NUMBER.finditer(text):
            whole, fraction = match.group(1), match.group(2) or ""
            value, decimals = float(whole.replace(",", "") + fraction), max(0, len(fraction) - 1)
            unit = MEASURE_UNIT.match(text, match.end())
            if value and unit and f"{match.group(0)}{unit.group(0)}".replace(" ", "") not in CODE_FACTS:
                found.append(Figure(path, line, match.group(0), value, decimals))
    return found


def main() -> int:
    if "--sources" in sys.argv[1:]:
        for figure, held in sources(documents(), REPO / "results").items():
            print(f"{figure.path.relative_to(REPO)}:{figure.line}: {figure.text}: {', '.join(held) or 'NONE'}")
        return 0
    missing = unsourced(documents(), REPO / "results")
    scopes = {doc: citations(doc.read_text(encoding="utf-8")) for doc in {f.path for f in missing}}
    for figure in missing:
        cited = scopes[figure.path].get(figure.line)
        named = ", ".join(dict.fromkeys(f"results/{c}" for c in cited or ()))
        where = f"the cited {named}" if cited else "any file under results/"
        print(f"{figure.path.relative_to(REPO)}:{figure.line}: {figure.text} (not in {where})")
    in_code = [figure for path in product_files() for figure in code_figures(path)]
    for figure in in_code:
        print(f"{figure.path.relative_to(REPO)}:{figure.line}: {figure.text} (a figure in a comment or docstring)")
    print(f"{len(missing)} figures with no source in results/, {len(in_code)} in the product's comments and "
          "docstrings", file=sys.stderr)
    return 1 if missing or in_code else 0


if __name__ == "__main__":
    sys.exit(main())
