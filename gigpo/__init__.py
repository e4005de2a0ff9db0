"""gigpo: a research harness for GiGPO / GRPO / RLOO training of LLM agents (arXiv 2505.10978).

The wheel maps the checkout's top-level ``conf/``, ``sweeps/`` and ``analysis/`` into this package
(``gigpo.conf``, ``gigpo.sweeps``, ``gigpo.analysis``; see setup.py). In a source checkout those
folders sit beside this one, so the checkout root joins ``__path__`` to give the same import names
without any install, and this tree's copies win over those of an editable install of another tree.
"""

from pathlib import Path

__version__ = "0.1.0"

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "sweeps" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))
