"""pipeline.core.recommend: the flags rpn-anchors recommends, and why."""
import shlex

from pipeline.commands import anchors as anchors_cmd
from pipeline.commands import preprocess
from pipeline.core import config as config_lib
from pipeline.core import recommend

LEVELS = ("block4_conv3", "block5_conv3")
BLOCK = {"scales": [3.0, 6.727, 22.627], "ratios": [0.5, 1.0, 2.0],
         "coverage": {"inside": {"0.5": 0.76, "0.7": 0.34}}}
CURRENT = {"scales": [3.0, 6.0, 12.0], "ratios": [0.5, 1.0, 2.0],
           "coverage": {"inside": {"0.5": 0.62, "0.7": 0.21}}}


def test_flags_of_two_levels_parse_back_into_rpn_preprocess():
  backbone = config_lib.BackboneConfig(backbone="VGG16", feature_layer=LEVELS[0],
                                       feature_layers=LEVELS)
  flags = recommend.recommended_flags(backbone, BLOCK["scales"], BLOCK["ratios"])
  assert flags == ["--backbone", "VGG16", "--feature_layers", "block4_conv3,block5_conv3",
                   "--scales", "3,6.727,22.627", "--ratios", "0.5,1,2", "--flip"]
  args = preprocess.build_parser().parse_args(
      ["--input", "ROOT", "--output", "OUT", "--weights", "none", *flags])
  assert (args.backbone, tuple(args.feature_layers), args.flip) == ("VGG16", LEVELS, True)
  assert tuple(args.scales) == (3.0, 6.727, 22.627) and tuple(args.ratios) == (0.5, 1.0, 2.0)
  assert preprocess.level_settings(args) == {"feature_layer": LEVELS[0],
                                             "feature_layers": LEVELS}


def test_one_layer_the_final_output_and_a_given_frame():
  one = config_lib.BackboneConfig(backbone="ResNet50", feature_layer="conv4_block6_out",
                                  min_side=600, max_side=1000)
  flags = recommend.recommended_flags(one, [2, 4], [1])
  assert flags == ["--backbone", "ResNet50", "--feature_layer", "conv4_block6_out",
                   "--min_side", "600", "--max_side", "1000", "--scales", "2,4",
                   "--ratios", "1", "--flip"]
  final = config_lib.BackboneConfig(backbone="Xception")  # final output: no layer flag
  assert recommend.recommended_flags(final, [3], [1], flip=False) == [
      "--backbone", "Xception", "--scales", "3", "--ratios", "1"]
  # the line rpn-anchors prints is the same list, shell-quoted
  assert shlex.split(anchors_cmd.recommended_line({"recommended_flags": flags})) == flags


def test_reasons_say_where_each_choice_comes_from():
  levels = config_lib.BackboneConfig(backbone="VGG16", feature_layer=LEVELS[0],
                                     feature_layers=LEVELS)
  lines = recommend.reasons(levels, False, BLOCK, CURRENT)
  assert lines[0].startswith("feature layers block4_conv3,block5_conv3: the backbone's "
                             "recommended levels")
  assert "0.620 -> 0.760" in lines[1] and "0.210 -> 0.340" in lines[1]
  assert lines[2].startswith("no resize") and lines[3].startswith("--flip")
  given = recommend.reasons(
      config_lib.BackboneConfig(backbone="VGG16", feature_layer="block5_conv3", min_side=600),
      True, BLOCK, CURRENT)
  assert given[0] == "feature layer(s) block5_conv3: as given"
  assert given[2] == "frame --min_side 600: as given"


def _anchors_args(*extra):
  return anchors_cmd.build_parser().parse_args(
      ["--input", "ROOT", "--output", "OUT", *extra])


def test_rpn_anchors_takes_the_recommended_layers_only_where_none_is_given():
  vgg = anchors_cmd.with_recommended_layers(_anchors_args("--backbone", "VGG16"))
  assert tuple(vgg.feature_layers) == LEVELS and vgg.feature_layer is None
  irv2 = anchors_cmd.with_recommended_layers(_anchors_args())  # the default backbone
  assert irv2.feature_layer == "block17_20_ac" and not irv2.feature_layers
  for given in (["--feature_layer", "block5_conv3"], ["--feature_layer", ""],
                ["--feature_layers", "block3_conv3,block4_conv3"]):
    args = _anchors_args("--backbone", "VGG16", *given)
    assert anchors_cmd.with_recommended_layers(args) is args, given
  unknown = _anchors_args("--backbone", "ResNet9000")  # left to the backbone check
  assert anchors_cmd.with_recommended_layers(unknown) is unknown
