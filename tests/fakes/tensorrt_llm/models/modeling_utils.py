"""Mirrors tensorrt_llm/models/modeling_utils.py: QuantConfig is a dataclass (unknown kwargs: TypeError)."""
from dataclasses import dataclass
from typing import List, Optional

from tensorrt_llm.quantization.mode import KV_CACHE_QUANT_ALGO_LIST, QuantAlgo


@dataclass
class QuantConfig:
    quant_algo: Optional[QuantAlgo] = None
    kv_cache_quant_algo: Optional[QuantAlgo] = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: Optional[List[float]] = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: Optional[List[str]] = None

    def __post_init__(self):
        if self.quant_algo is not None:
            self.quant_algo = QuantAlgo(self.quant_algo)
        if self.kv_cache_quant_algo is not None:
            self.kv_cache_quant_algo = QuantAlgo(self.kv_cache_quant_algo)
            if self.kv_cache_quant_algo not in KV_CACHE_QUANT_ALGO_LIST:
                raise ValueError(f"kv_cache_quant_algo {self.kv_cache_quant_algo} is not supported")
