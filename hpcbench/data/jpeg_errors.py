"""What a failed batch decode means, in one line: an image that cannot be decoded is named by its
shard and key, and why (corrupt, or a CMYK JPEG that nvJPEG does not decode); running out of
memory is said as such, not blamed on the data."""
from __future__ import annotations

import re
from typing import Callable, List, Optional

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from hpcbench.errors import DataError, OutOfMemory

# What torch's allocators and CUDA say when an allocation fails (a CPU allocation raises a plain
# RuntimeError: "DefaultCPUAllocator: can't allocate memory").
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Cannot allocate memory", "CUDA error: out of memory")
# Start-of-frame markers (baseline, extended, progressive, lossless...): the byte after the
# segment's length, height and width and precision is the number of colour components.
_START_OF_FRAME = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or any(text in str(error) for text in _OUT_OF_MEMORY)


def jpeg_components(data: bytes) -> Optional[int]:
    """The number of colour components a JPEG's frame header declares (3: YCbCr, 4: CMYK or YCCK),
    or None where no frame header is found."""
    position = 2  # after the start-of-image marker
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _START_OF_FRAME:
            return data[position + 9]
        position += 2 + length
    return None


def _allocation(error: BaseException) -> str:
    """The sentence of an allocator's message that says what failed ("DefaultCPUAllocator: can't
    allocate memory: you tried to allocate 48000000 bytes"), without the C++ frames around it."""
    found = re.search(r"[^.\]\n]*(?:can't allocate memory|out of memory|Cannot allocate memory)[^.\n]*", str(error))
    return found.group(0).strip() if found else _first_line(error)


def _first_line(error: BaseException) -> str:
    """libjpeg's own message: torch prefixes "decode_jpeg, <source file>:<line>, " to it."""
    return str(error).strip().splitlines()[0].rsplit(", ", 1)[-1] if str(error).strip() else type(error).__name__


def decode_failure(error: RuntimeError, jpegs: List[torch.Tensor], device: torch.device,
                   name_of: Optional[Callable[[int], str]]) -> Exception:
    """The exception to raise for a batch decode that raised `error`: each image is decoded alone
    to find one that fails by itself."""
    megabytes = sum(j.numel() for j in jpegs) / 2**20
    if is_out_of_memory(error):
        return OutOfMemory(f"out of memory decoding a batch of {len(jpegs)} JPEGs ({megabytes:.1f} MB) on {device}: "
                           f"{_allocation(error)}; lower the batch size or data.num_workers, or ask for more memory")
    for i, jpeg in enumerate(jpegs):
        try:
            decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as alone:
            if is_out_of_memory(alone):
                return OutOfMemory(f"out of memory decoding one JPEG on {device}: {_allocation(alone)}")
            where = name_of(i) if name_of else f"image {i} of the batch"
            if device.type == "cuda" and jpeg_components(jpeg.numpy().tobytes()) == 4:
                return DataError(f"{where} is a CMYK JPEG, which nvJPEG does not decode: pack the data set again "
                                 f"(hpcbench-data pack stores CMYK images as RGB JPEGs)")
            return DataError(f"corrupt JPEG in {where}: {_first_line(alone)}; repack it from a good copy")
    return error
