"""Data: the data set registry, generated TFDS data sets, catalog sources and
deterministic batchers."""

from mixture_dd.data.pipeline import (
  NAMES,
  ArraySource,
  Batcher,
  DataSpec,
  RecordSource,
  SourceBatcher,
  data_spec,
  decode_text,
  default_data_config,
  load,
  make_batcher,
)
from mixture_dd.data.registry import DataSet, register
