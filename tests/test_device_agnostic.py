"""`src/` must run on any accelerator `accelerate` drives (CUDA, Ascend NPU, XPU, MPS, CPU): no CUDA-specific call.

Device code goes through `accelerator.device`, `torch.get_device_module(device.type)` or the helpers of
`ple_trl.device`. Comments and docstrings may name CUDA; code may not. A line that truly must be CUDA-only can say
so with a trailing `# device-agnostic: ok (<why>)`.
"""

import ast
import io
import re
import tokenize
import pytest

from helpers import SRC

PRAGMA = "# device-agnostic: ok"

CUDA_PATTERNS = {
    "`.cuda(` (use `.to(device)`)": re.compile(r"\.cuda\s*\("),
    "`torch.cuda` (use `torch.get_device_module(device.type)` or ple_trl.device)": re.compile(
        r"\btorch\s*\.\s*cuda\b"
    ),
    "`from torch import cuda` / `from torch.cuda import ...`": re.compile(
        r"^\s*from\s+torch(\s+import\s+.*\bcuda\b|\.cuda\b)"
    ),
    "`import torch.cuda`": re.compile(r"^\s*import\s+torch\.cuda\b"),
    "a hard-coded CUDA device (use `accelerator.device`)": re.compile(
        r"""(\bdevice\s*=\s*|torch\.device\s*\(\s*|\.to\s*\(\s*)(["'])cuda(:\d+)?\2"""
    ),
    '`device_type="cuda"` in autocast (use `device.type`)': re.compile(r"""device_type\s*=\s*(["'])cuda\1"""),
    "a hard-coded NCCL backend (accelerate picks nccl/hccl/xccl/gloo)": re.compile(r"""backend\s*=\s*(["'])nccl\1"""),
}


def _docstring_lines(tree):
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def code_lines(source):
    """`{line number: code}` of `source` with comments removed and docstring lines dropped."""
    skip = _docstring_lines(ast.parse(source))
    raw = source.splitlines()
    stripped = {i + 1: line for i, line in enumerate(raw)}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            stripped[row] = stripped[row][:col]
    return {n: line for n, line in stripped.items() if n not in skip and PRAGMA not in raw[n - 1]}


def find_cuda_calls(source, name="<source>"):
    """`["file:line: what -> code", ...]` for every CUDA-specific call in `source`."""
    found = []
    for number, line in code_lines(source).items():
        for what, pattern in CUDA_PATTERNS.items():
            if pattern.search(line):
                found.append(f"{name}:{number}: {what} -> {line.strip()}")
    return found


def test_src_has_no_cuda_specific_calls():
    files = sorted(SRC.rglob("*.py"))
    assert files, f"no Python files under {SRC}"
    found = []
    for path in files:
        found += find_cuda_calls(path.read_text(encoding="utf-8"), str(path.relative_to(SRC.parent)))
    assert not found, "CUDA-specific calls in src/ (make them device-agnostic):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "model.cuda()",
        "x = t.cuda(0)",
        "torch.cuda.empty_cache()",
        "peak = torch.cuda.max_memory_allocated()",
        "scaler = torch.cuda.amp.GradScaler()",
        "with torch.cuda.amp.autocast():\n    pass",
        "from torch.cuda.amp import autocast",
        "from torch import cuda",
        "import torch.cuda",
        'x = torch.zeros(2, device="cuda")',
        "x = torch.zeros(2, device='cuda:1')",
        'd = torch.device("cuda")',
        'model.to("cuda")',
        'with torch.autocast(device_type="cuda"):\n    pass',
        'dist.init_process_group(backend="nccl")',
    ],
)
def test_scanner_catches(snippet):
    found = find_cuda_calls(snippet, "snippet.py")
    assert found and found[0].startswith("snippet.py:1:"), found


@pytest.mark.parametrize(
    "snippet",
    [
        "model.to(accelerator.device)",
        "module = torch.get_device_module(device.type)",
        "# torch.cuda.empty_cache() would be CUDA-only\nx = 1",
        'def f():\n    """Unlike torch.cuda.max_memory_allocated, this works everywhere."""\n    return 1',
        'if device_type == "cuda":\n    pass',
        "model.cuda()  # device-agnostic: ok (only reached behind an is_cuda_available() check)",
        "torch.npu.empty_cache()",
    ],
)
def test_scanner_allows(snippet):
    assert find_cuda_calls(snippet) == []
