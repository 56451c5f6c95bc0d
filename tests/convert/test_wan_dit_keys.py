"""The key table: counts, shapes and coverage against the released checkpoints' key sets, and the diffusers rename."""

from __future__ import annotations

import math

import pytest

from rehyat_jax.convert import wan_dit_keys
from rehyat_jax.models.config import WAN_T2V_1_3B, WAN_T2V_14B, WAN_TINY
from wan_torch_fixtures import build_tiny_diffusers_wan, original_layout_state_dict, wan_config_from_diffusers


@pytest.mark.parametrize("cfg, count, params", [(WAN_T2V_1_3B, 825, 1_418_996_800),
                                                (WAN_T2V_14B, 1095, 14_288_491_584)])
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_key_counts_and_parameter_totals(cfg, count, params, layout):
  shapes = wan_dit_keys.expected_source_keys(cfg, layout)
  assert len(shapes) == count
  assert sum(math.prod(shape) for shape in shapes.values()) == params


def test_released_shapes():
  original = wan_dit_keys.expected_source_keys(WAN_T2V_1_3B, "original")
  assert original["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
  assert original["text_embedding.0.weight"] == (1536, 4096)
  assert original["time_embedding.0.weight"] == (1536, 256)
  assert original["time_projection.1.weight"] == (9216, 1536)
  assert original["blocks.29.modulation"] == (1, 6, 1536)
  assert original["blocks.0.ffn.0.weight"] == (8960, 1536)
  assert original["blocks.0.ffn.2.weight"] == (1536, 8960)
  assert original["head.modulation"] == (1, 2, 1536)
  assert original["head.head.weight"] == (64, 1536)
  diffusers = wan_dit_keys.expected_source_keys(WAN_T2V_1_3B, "diffusers")
  assert diffusers["condition_embedder.time_proj.weight"] == (9216, 1536)
  assert diffusers["blocks.3.norm2.bias"] == (1536,)
  assert diffusers["proj_out.weight"] == (64, 1536)
  shapes = wan_dit_keys.target_shapes(WAN_T2V_1_3B)
  assert shapes["patch_embedding"]["kernel"] == (1, 2, 2, 16, 1536)
  assert shapes["text_embedding"]["linear_1"]["kernel"] == (4096, 1536)
  assert shapes["time_projection"]["kernel"] == (1536, 9216)
  assert shapes["blocks"]["modulation"] == (30, 1, 6, 1536)
  assert shapes["blocks"]["ffn"]["fc1"]["kernel"] == (30, 1536, 8960)
  assert shapes["head"]["head"]["kernel"] == (1536, 64)


def _leaf_paths(tree, prefix=()):
  for name, sub in tree.items():
    if isinstance(sub, dict):
      yield from _leaf_paths(sub, prefix + (name,))
    else:
      yield prefix + (name,), sub


def test_every_target_slot_is_filled_exactly_once():
  table = wan_dit_keys.original_key_table(WAN_TINY)
  filled = [(slot.path, slot.layer) for slot in table.values()]
  assert len(filled) == len(set(filled))
  wanted = set()
  for path, shape in _leaf_paths(wan_dit_keys.target_shapes(WAN_TINY)):
    if path[0] == "blocks":
      assert shape[0] == WAN_TINY.num_layers
      wanted.update((path, layer) for layer in range(WAN_TINY.num_layers))
    else:
      wanted.add((path, None))
  assert set(filled) == wanted


def test_diffusers_rename_is_a_bijection_onto_original_keys():
  rename = wan_dit_keys.diffusers_to_original_keys(WAN_T2V_14B.num_layers)
  assert set(rename.values()) == set(wan_dit_keys.original_key_table(WAN_T2V_14B))
  inverse = wan_dit_keys.original_to_diffusers_keys(WAN_T2V_14B.num_layers)
  assert all(rename[inverse[key]] == key for key in inverse)


def test_rename_matches_the_torch_modules():
  """The table's diffusers → original rename agrees with the module-attribute mapping of the test fixtures."""
  model = build_tiny_diffusers_wan()
  by_module = original_layout_state_dict(model)
  diffusers_state = model.state_dict()
  rename = wan_dit_keys.diffusers_to_original_keys(model.config.num_layers)
  assert set(rename) == set(diffusers_state)
  for diffusers_key, original_key in rename.items():
    assert by_module[original_key].data_ptr() == diffusers_state[diffusers_key].data_ptr(), diffusers_key
  assert wan_dit_keys.expected_source_keys(wan_config_from_diffusers(model), "diffusers") == {
      key: tuple(tensor.shape) for key, tensor in diffusers_state.items()}


@pytest.mark.parametrize("key, is_i2v", [
    ("img_emb.proj.0.weight", True),
    ("condition_embedder.image_embedder.ff.net.0.proj.weight", True),
    ("blocks.3.cross_attn.k_img.weight", True),
    ("blocks.3.attn2.add_v_proj.bias", True),
    ("blocks.3.attn2.norm_added_k.weight", True),
    ("blocks.3.cross_attn.k.weight", False),
    ("blocks.3.attn2.to_k.weight", False),
    ("img_embedding", False),
])
def test_image_to_video_keys(key, is_i2v):
  assert wan_dit_keys.is_image_to_video_key(key) == is_i2v
