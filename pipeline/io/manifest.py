"""manifest.json: one module writes it, reads it and checks it.

`rpn-preprocess` writes the manifest last, after every shard is in place, so
its presence marks a finished run. It holds everything needed to read the
shards (channels, dtype, compression, shard list with each shard's bytes and
records) and to reproduce them
(backbone, weights, anchors, targets, input). `Manifest` is its typed form:
`Manifest.load(dir)` (the manifest of a shard directory, checked against the
shard files) and `Manifest.read(path)` fail with a ManifestError naming the
file and the problem; `to_json()` gives back the dict on disk, key for key.

Transitional: `load` and `read` return the dict itself, for trainer/cli.py,
train.py, propose.py and model.py, which still index it by key; the
functions below that take a manifest accept either form.

Paths go through `pipeline.io.storage`, so gs:// and other remote paths work.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pipeline.core import config
from pipeline.io import schema, storage

REQUIRED_KEYS = ("version", "backbone", "weights", "feature_channels", "tile_size", "dtype",
                 "compression", "anchor", "targets", "num_shards", "shard_files", "counts")
COMPRESSIONS = ("NONE", "GZIP")
# Keys that must agree between manifests of data used with one model (the
# tile dtype may differ: tiles are widened to float32 when read).
COMPATIBLE_KEYS = ("backbone", "feature_layer", "feature_layers", "weights", "weights_seed",
                   "feature_channels", "level_channels", "tile_size",
                   "anchor", "stride_mode", "resize")
PADDING_NOTE = "small images padded with zeros at the bottom and right up to min_input_side"


class ManifestError(ValueError):
  """A manifest or shard directory that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Resize:
  """The optional resize before the backbone (None: none on that side)."""
  min_side: Optional[int] = None
  max_side: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """One entry of "shards": a shard file's name, bytes and records."""
  file: str
  bytes: int
  records: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
  """manifest.json, a field per key (the key's name unless noted).

  Keys that older manifests lack take the defaults their readers always gave
  them (layout "tiles", stride_mode "ratio", no resize, the default
  max_pixels, ...); `keys` remembers the keys the JSON had, in its order, so
  that to_json() writes back exactly that dict. Keys this code does not know
  (e.g. rpn-train's "sampling") are kept in `extra`. Dict-valued fields hold
  the JSON objects as they are ("anchor", "targets", "input", "counts",
  "backbone_threads"); anchor_config and target_config read the first two.
  """
  version: int
  created_by: Optional[str] = None
  # "tiles" (the method; also every manifest before 0.6.0) or "maps"
  layout: str = config.TILES_LAYOUT
  backbone: str
  feature_layer: Optional[str] = None  # None: the backbone's final output
  # several feature levels (--feature_layers), finest first; feature_layer is
  # the first. None (the key absent): one level
  feature_layers: Optional[List[str]] = None
  weights: str
  weights_seed: int = 0
  # C, the channels of a tile; with feature levels of different channel
  # counts the most of any level (a tile of a narrower level is padded with
  # zero channels when read: trainer input)
  feature_channels: int
  # several feature levels of different channel counts: each level's C,
  # finest first. None (the key absent): every level has feature_channels
  level_channels: Optional[List[int]] = None
  tile_size: int
  dtype: str
  compression: str
  # maps: "anchor" and "targets" are rpn-train's defaults, not applied by rpn-preprocess
  anchor: Dict[str, Any]  # AnchorConfig's fields (lists) and num_anchors
  targets: Dict[str, Any]  # TargetConfig's fields
  stride_mode: str = "ratio"
  resize: Resize = Resize()
  min_input_side: Optional[int] = None
  padding: Optional[str] = None
  max_pixels: int = config.DEFAULT_MAX_PIXELS  # the decompression-bomb limit the run used
  input: Dict[str, Any] = dataclasses.field(default_factory=dict)
  shard_pattern: Optional[str] = None
  num_shards: int
  max_shard_mb: Optional[float] = None  # None: a fixed number of shards
  records_shuffled: bool = False
  # rpn-preprocess --flip: every image also mirrored (id + config.FLIP_SUFFIX)
  flipped_copies: bool = False
  shard_files: Tuple[str, ...]
  counts: Dict[str, int]
  # {"1": 13}: images whose features that many TensorFlow threads computed
  backbone_threads: Dict[str, int] = dataclasses.field(default_factory=dict)
  # None: a manifest written before rpn-preprocess recorded them
  shards: Optional[Tuple[ShardInfo, ...]] = None
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
  keys: Tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

  @classmethod
  def from_json(cls, manifest: Mapping[str, Any], path: str = "manifest") -> "Manifest":
    """The Manifest of a manifest dict, after validate(manifest, path)."""
    validate(manifest, path)
    known = {f.name for f in dataclasses.fields(cls)} - {"extra", "keys", "resize", "shards",
                                                         "shard_files", "max_pixels"}
    values = {k: copy.deepcopy(v) for k, v in manifest.items() if k in known}
    resize = manifest.get("resize") or {}
    shards = manifest.get("shards")
    return cls(
        **values,
        resize=Resize(resize.get("min_side"), resize.get("max_side")),
        max_pixels=int(manifest.get("max_pixels") or config.DEFAULT_MAX_PIXELS),
        shard_files=tuple(manifest["shard_files"]),
        shards=None if shards is None else tuple(
            ShardInfo(s["file"], s["bytes"], s["records"]) for s in shards),
        extra={k: copy.deepcopy(v) for k, v in manifest.items()
               if k not in known and k not in _SPECIAL},
        keys=tuple(manifest))

  def to_json(self) -> Dict[str, Any]:
    """The manifest dict: the keys of `keys`, in that order."""
    values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
              if f.name not in ("extra", "keys")}
    values.update(
        resize=dataclasses.asdict(self.resize), shard_files=list(self.shard_files),
        shards=None if self.shards is None else [dataclasses.asdict(s) for s in self.shards],
        **copy.deepcopy(self.extra))
    return {key: values[key] for key in self.keys}

  @classmethod
  def read(cls, path: str) -> "Manifest":
    """A manifest.json file (of a shard directory or a job directory), validated."""
    return cls.from_json(_read_json(path), path)

  @classmethod
  def load(cls, data_dir: str) -> "Manifest":
    """The manifest of a shard directory, checked against the shard files present."""
    path = path_in(data_dir)
    if not storage.exists(path):
      raise ManifestError(f"{path}: not found; {data_dir} is not the output of a finished "
                          f"rpn-preprocess run (the manifest is written last)")
    manifest = cls.read(path)
    manifest.check_shard_files(data_dir, path)
    return manifest

  def check_shard_files(self, data_dir: str, path: str) -> None:
    """The shard files in data_dir are this manifest's (read from `path`): none
    missing, none stale, none of another layout."""
    for shard in self.shard_paths(data_dir):
      if not storage.exists(shard):
        raise ManifestError(f"{shard}: shard listed in {path} is missing")
    prefix = config.shard_prefix(self.layout)
    present = {os.path.basename(p)
               for p in storage.glob(storage.join(data_dir, prefix + "-*"))}
    stale = sorted(present - set(self.shard_files))
    if stale:
      raise ManifestError(f"{data_dir}: shard files not listed in {path} (stale, from another "
                          f"run? remove them): {stale}")
    for other in config.LAYOUTS:
      foreign = storage.glob(storage.join(data_dir, config.shard_prefix(other) + "-*"))
      if other != self.layout and foreign:
        raise ManifestError(
            f"{data_dir}: mixed layouts: {path} is of layout {self.layout!r} but "
            f"{os.path.basename(sorted(foreign)[0])} is a shard of layout {other!r} (and "
            f"{len(foreign) - 1} more); remove them, or write each layout to its own directory")

  def shard_paths(self, data_dir: str) -> List[str]:
    """The shard files as paths under data_dir."""
    return [storage.join(data_dir, name) for name in self.shard_files]

  @property
  def levels(self) -> Tuple[Optional[str], ...]:
    """The feature layers, finest first (one level: (feature_layer,))."""
    return tuple(self.feature_layers or ()) or (self.feature_layer,)

  @property
  def num_levels(self) -> int:
    return len(self.levels)

  @property
  def channels_per_level(self) -> Tuple[int, ...]:
    """Each feature level's C, finest first (level_channels, else feature_channels each)."""
    if self.level_channels:
      return tuple(int(c) for c in self.level_channels)
    return (int(self.feature_channels),) * self.num_levels

  @property
  def num_anchors(self) -> int:
    """A, the anchors per feature-map point."""
    return int(self.anchor["num_anchors"])

  @property
  def anchor_config(self) -> config.AnchorConfig:
    """The anchors ("anchor"; of a maps manifest: rpn-train's defaults)."""
    return config.AnchorConfig(
        scales=tuple(float(v) for v in self.anchor["scales"]),
        ratios=tuple(float(v) for v in self.anchor["ratios"]),
        order=self.anchor.get("order", config.AnchorConfig.order))

  @property
  def target_config(self) -> config.TargetConfig:
    """The targets' settings and sampling seed ("targets")."""
    t = self.targets
    return config.TargetConfig(
        fg_iou_thresh=float(t["fg_iou_thresh"]), bg_iou_thresh=float(t["bg_iou_thresh"]),
        batch_size=int(t["batch_size"]), fg_fraction=float(t["fg_fraction"]),
        seed=int(t.get("seed", 0)))

  @property
  def is_maps(self) -> bool:
    return self.layout == config.MAPS_LAYOUT

  @property
  def tfrecord_compression(self) -> str:
    """The compression_type of tf.data.TFRecordDataset ("GZIP" or "")."""
    return "GZIP" if self.compression == "GZIP" else ""

  def replaced(self, **values) -> "Manifest":
    """This manifest with the given keys of manifest.json set (as dict.update
    would: a new key goes last), validated again."""
    return Manifest.from_json(dict(self.to_json(), **values))

  def check_compatible(self, other: "Manifest", what: str = "data") -> None:
    """ManifestError naming the first key on which `other` (named `what` in the
    message) disagrees with this manifest (the module's check_compatible)."""
    check_compatible(self, other, what)


# Keys from_json reads into fields of another name or form.
_SPECIAL = ("resize", "shards", "shard_files", "max_pixels")



def shard_suffix(compression: str) -> str:
  return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def path_in(data_dir: str) -> str:
  return storage.join(data_dir, config.MANIFEST_NAME)


def build(cfg: config.PreprocessConfig, counts: Dict[str, int], shard_files: List[str],
          feature_channels, min_input_side: int,
          shards: Optional[List[Dict]] = None,
          backbone_threads: Optional[Dict[str, int]] = None) -> Manifest:
  """The manifest of a finished run: `cfg`, the run's counts and its shard file names.

  `feature_channels` is C, or each level's C (finest first) with several
  levels: when those differ, feature_channels is their most and
  level_channels lists them.
  `shards` ({"file", "bytes", "records"} of each shard, any order;
  pipeline.io.shards.describe_shard) become the "shards" key, in the order of
  shard_files; they must name the same files. `backbone_threads` ({"1": 13}:
  images whose features that many TensorFlow threads computed) says which
  runs' features are byte-identical (pipeline/io/determinism.py).
  """
  fmt = cfg.output_format
  num_shards = len(shard_files)
  per_level = ([int(c) for c in feature_channels]
               if isinstance(feature_channels, (list, tuple)) else [int(feature_channels)])
  manifest = {
      "version": config.MANIFEST_VERSION,
      "created_by": "rpn-preprocess",
      # maps: "anchor" and "targets" are rpn-train's defaults, not applied here
      "layout": fmt.layout,
      "backbone": cfg.backbone.backbone,
      # None: the backbone's final output
      "feature_layer": cfg.backbone.feature_layer,
      "weights": cfg.backbone.weights,
      "weights_seed": cfg.targets.seed,
      "feature_channels": max(per_level),
      "tile_size": schema.TILE_SIZE,
      "dtype": fmt.tile_dtype,
      "compression": fmt.compression,
      "anchor": dict(config.to_dict(cfg.anchors), num_anchors=cfg.anchors.num_anchors),
      "targets": config.to_dict(cfg.targets),
      "stride_mode": cfg.backbone.stride_mode,
      "resize": {"min_side": cfg.backbone.min_side, "max_side": cfg.backbone.max_side},
      "min_input_side": min_input_side,
      "padding": PADDING_NOTE,
      "max_pixels": cfg.backbone.max_pixels,
      "input": {"root": cfg.input_root, "split": cfg.split, "images": cfg.images_dir,
                "annotations": cfg.annotations_dir, "image_set": cfg.image_set,
                "missing_annotations": cfg.missing_annotations},
      "shard_pattern": f"{config.shard_prefix(fmt.layout)}-?????-of-{num_shards:05d}"
                       f"{shard_suffix(fmt.compression)}",
      "num_shards": num_shards,
      "max_shard_mb": fmt.max_shard_mb if fmt.num_shards == 0 else None,
      "records_shuffled": cfg.shuffle_records,
      "shard_files": sorted(shard_files),
      "counts": dict(sorted(counts.items())),
      "backbone_threads": dict(backbone_threads or {}),
  }
  if cfg.flip:  # only then, so that other runs' manifests stay as they were
    manifest["flipped_copies"] = True
  if len(cfg.backbone.feature_layers) > 1:  # likewise
    manifest["feature_layers"] = list(cfg.backbone.feature_layers)
  if len(set(per_level)) > 1:  # likewise: only levels of different channel counts
    manifest["level_channels"] = per_level
  if shards is not None:
    by_file = {shard["file"]: shard for shard in shards}
    if sorted(by_file) != manifest["shard_files"] or len(shards) != num_shards:
      raise ValueError(f"shard descriptions {sorted(s['file'] for s in shards)} do not match "
                       f"the shard files {manifest['shard_files']}")
    manifest["shards"] = [{"file": name, "bytes": int(by_file[name]["bytes"]),
                           "records": int(by_file[name]["records"])}
                          for name in manifest["shard_files"]]
  return Manifest.from_json(manifest, "built")


def write(data_dir: str, manifest: Manifest) -> None:
  """Writes DIR/manifest.json atomically (temp file and rename)."""
  storage.write_json(path_in(data_dir), manifest.to_json())


def _read_json(path: str) -> Dict:
  if not storage.exists(path):
    raise ManifestError(f"{path}: not found")
  try:
    return storage.read_json(path)
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise ManifestError(f"{path}: not valid JSON ({e})") from None


def validate(manifest: Mapping[str, Any], path: str) -> None:
  """Checks keys and values of a manifest dict; `path` names it in errors."""
  if not isinstance(manifest, dict):
    raise ManifestError(f"{path}: not a JSON object")
  missing = [k for k in REQUIRED_KEYS if k not in manifest]
  if missing:
    raise ManifestError(f"{path}: missing keys {missing}")
  if manifest["version"] != config.MANIFEST_VERSION:
    raise ManifestError(f"{path}: version {manifest['version']!r}, this code reads "
                        f"version {config.MANIFEST_VERSION}")
  if manifest["dtype"] not in schema.TILE_DTYPES:
    raise ManifestError(f"{path}: dtype {manifest['dtype']!r} not in {schema.TILE_DTYPES}")
  if manifest["compression"] not in COMPRESSIONS:
    raise ManifestError(f"{path}: compression {manifest['compression']!r} not in {COMPRESSIONS}")
  if manifest["tile_size"] != schema.TILE_SIZE:
    raise ManifestError(f"{path}: tile_size {manifest['tile_size']!r}, the RPN head takes "
                        f"{schema.TILE_SIZE}x{schema.TILE_SIZE} tiles")
  anchor = manifest["anchor"]
  if not isinstance(anchor, dict) or "num_anchors" not in anchor:
    raise ManifestError(f"{path}: anchor has no num_anchors: {anchor!r}")
  if "scales" in anchor and "ratios" in anchor and (
      int(anchor["num_anchors"]) != len(anchor["scales"]) * len(anchor["ratios"])):
    raise ManifestError(f"{path}: anchor num_anchors {anchor['num_anchors']} != "
                        f"{len(anchor['scales'])} scales x {len(anchor['ratios'])} ratios")
  files = manifest["shard_files"]
  if not isinstance(files, list) or len(files) != manifest["num_shards"]:
    raise ManifestError(f"{path}: shard_files lists {len(files)} files but num_shards is "
                        f"{manifest['num_shards']}")
  layout = manifest.get("layout", config.TILES_LAYOUT)  # none before 0.6.0: tiles
  if layout not in config.LAYOUTS:
    raise ManifestError(f"{path}: layout {manifest['layout']!r} not in {config.LAYOUTS}")
  prefix = config.shard_prefix(layout) + "-"
  wrong = [name for name in files if not str(name).startswith(prefix)]
  if wrong:
    raise ManifestError(f"{path}: layout {layout!r} but shard file {wrong[0]!r} "
                        f"does not start with {prefix!r}")
  levels = manifest.get("feature_layers")
  if levels is not None and not (
      isinstance(levels, list) and len(levels) > 1 and all(isinstance(v, str) and v
                                                           for v in levels)
      and levels[0] == manifest.get("feature_layer")):
    raise ManifestError(f"{path}: feature_layers {levels!r:.200} is not a list of two or more "
                        f"layer names starting with feature_layer "
                        f"{manifest.get('feature_layer')!r}")
  _validate_level_channels(manifest, path)
  _validate_shards(manifest, path)


def _validate_level_channels(manifest: Mapping[str, Any], path: str) -> None:
  """The optional "level_channels" key: one positive int per feature level,
  their most feature_channels."""
  if "level_channels" not in manifest:
    return
  channels, levels = manifest["level_channels"], manifest.get("feature_layers") or []
  sound = (isinstance(channels, list) and len(channels) == len(levels) > 1
           and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
           and max(channels) == manifest["feature_channels"])
  if not sound:
    raise ManifestError(f"{path}: level_channels {channels!r:.200} is not one channel count "
                        f"per feature layer ({len(levels)}) whose most is feature_channels "
                        f"{manifest['feature_channels']!r}")


def _validate_shards(manifest: Mapping[str, Any], path: str) -> None:
  """The optional "shards" key: one {"file", "bytes", "records"} per shard_files entry."""
  if "shards" not in manifest:
    return
  shards, files = manifest["shards"], manifest["shard_files"]
  if not isinstance(shards, list) or len(shards) != len(files):
    raise ManifestError(f"{path}: shards must list one entry per shard file "
                        f"({len(files)}), not {shards!r:.200}")
  for i, (shard, name) in enumerate(zip(shards, files, strict=True)):
    sound = (isinstance(shard, dict) and shard.get("file") == name
             and all(isinstance(shard.get(k), int) and not isinstance(shard.get(k), bool)
                     and shard[k] >= 0 for k in ("bytes", "records")))
    if not sound:
      raise ManifestError(f"{path}: shards[{i}] is {shard!r:.200}, expected "
                          f"{{'file': {name!r}, 'bytes': int, 'records': int}}")


def check_compatible(manifest_a: Manifest, manifest_b: Manifest, what: str = "data") -> None:
  """Raises ManifestError naming the first key on which two manifests disagree
  (as written: a key one of them lacks counts as None).

  `what` names manifest_b in the message ("--val_data", "the job's model").
  """
  a, b = manifest_a.to_json(), manifest_b.to_json()
  for key in COMPATIBLE_KEYS:
    if a.get(key) != b.get(key):
      raise ManifestError(
          f"{what}: {key} is {b.get(key)!r} where the other manifest has "
          f"{a.get(key)!r}; features of different {key} do not mix")
