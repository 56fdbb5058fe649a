"""Attribute schemas: grouping, masks, name lookup and errors."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.data.schema import (
    PUBFIG73_FILE_COLUMNS, Group, Schema, UnknownAttributeError, get_schema,
)


def test_builtin_sizes():
    pubfig = get_schema("pubfig73")
    assert (pubfig.num_attributes, pubfig.num_heads) == (73, 42)
    assert sorted(pubfig.attribute_names) == sorted(PUBFIG73_FILE_COLUMNS)
    assert sum(g.is_binary for g in pubfig.groups) == 26
    celeba = get_schema("celeba40")
    assert celeba.num_attributes == 40
    hair = celeba.group_of("Black_Hair")
    assert hair.attributes == ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") and hair.allow_none
    assert hair.num_classes == 5
    synth = get_schema("synthfaces")
    assert synth.group_of("bald").name == "hair"


def test_name_lookup_ignores_case_spaces_underscores():
    s = get_schema("celeba40")
    assert s.index("black hair") == s.index("Black_Hair") == s.index("BLACK-HAIR")
    assert get_schema("pubfig73").index("5 o clock shadow") == get_schema("pubfig73").index("5_o'_Clock_Shadow")


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownAttributeError, match="closest: Black Hair"):
        get_schema("pubfig73").index("blak hair")
    with pytest.raises(UnknownAttributeError, match="no attributes given"):
        get_schema("pubfig73").parse(" , ")


def test_unknown_schema_lists_builtins():
    with pytest.raises(ValueError, match="built-in schemas: celeba40, pubfig73, synthfaces"):
        get_schema("lfw")


def test_head_targets_for_groups_binary_and_masks():
    s = Schema("t", [Group("hair", ("Black", "Blond", "Brown")), Group("Male", ("Male",)),
                     Group("col", ("Red", "Blue"), allow_none=True)])
    attrs = np.array([
        [0, 1, 0, 1, 0, 0],   # blond, male, no colour -> none class
        [0, 0, 0, 0, 1, 1],   # no hair label (0 present) -> masked; both colours -> masked
        [1, 0, 0, 0, 0, 1],
    ], np.float32)
    mask = np.ones_like(attrs, bool)
    mask[2, 3] = False  # Male unknown
    t = s.head_targets(attrs, mask)
    np.testing.assert_array_equal(t, [[1, 1, 2], [-1, 0, -1], [0, -1, 1]])
    np.testing.assert_array_equal(np.asarray(s.head_targets(jnp.asarray(attrs), jnp.asarray(mask), xp=jnp)), t)


def test_labels_from_scores_resolves_groups_by_argmax():
    s = Schema("t", [Group("age", ("Baby", "Youth", "Senior")), Group("Male", ("Male",))])
    scores = np.array([[0.2, 1.5, 0.9, -0.3], [-1.0, -0.5, -2.0, 0.7]], np.float32)
    attrs, mask = s.labels_from_scores(scores)
    np.testing.assert_array_equal(attrs, [[0, 1, 0, 0], [0, 0, 0, 1]])
    # no age above 0 in row 1: the group is unknown (PubFig leaves many images unlabelled for age)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [0, 0, 0, 1]])


def test_attribute_probabilities_follow_heads():
    s = Schema("t", [Group("hair", ("Black", "Blond")), Group("Male", ("Male",))])
    logits = [np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]])]
    p = s.attribute_probabilities(logits)
    np.testing.assert_allclose(p, [[1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2)), 0.5]], rtol=1e-6)


def test_custom_schema_from_config_dict():
    s = get_schema({"name": "mine", "groups": ["Male", {"name": "eyes", "attributes": ["Blue Eyes", "Brown Eyes"]}]})
    assert s.attribute_names == ("Male", "Blue Eyes", "Brown Eyes") and s.head_sizes == (2, 2)
    with pytest.raises(ValueError, match="twice"):
        Schema("dup", [Group("a", ("X",)), Group("b", ("x",))])
