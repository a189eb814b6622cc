"""Data: generated TFDS data sets, catalog loaders and a deterministic batcher."""
from mixture_dd.data.pipeline import ArraySource
from mixture_dd.data.pipeline import Batcher
from mixture_dd.data.pipeline import DataSpec
from mixture_dd.data.pipeline import decode_text
from mixture_dd.data.pipeline import default_data_config
from mixture_dd.data.pipeline import load
from mixture_dd.data.pipeline import NAMES
