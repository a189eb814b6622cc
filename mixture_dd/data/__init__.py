"""Data: the data set registry, generated TFDS data sets, catalog sources and
deterministic batchers."""
from mixture_dd.data.pipeline import ArraySource
from mixture_dd.data.pipeline import Batcher
from mixture_dd.data.pipeline import data_spec
from mixture_dd.data.pipeline import DataSpec
from mixture_dd.data.pipeline import decode_text
from mixture_dd.data.pipeline import default_data_config
from mixture_dd.data.pipeline import load
from mixture_dd.data.pipeline import make_batcher
from mixture_dd.data.pipeline import NAMES
from mixture_dd.data.pipeline import RecordSource
from mixture_dd.data.pipeline import SourceBatcher
from mixture_dd.data.registry import DataSet
from mixture_dd.data.registry import register
