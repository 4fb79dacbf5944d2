import numpy as np
import pytest

from em3_tf._tf import tf
from em3_tf.layers.lora import LoRADense


def _x(seed=0, shape=(6, 5)):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def test_fresh_adapter_leaves_output_unchanged():
    tf.keras.utils.set_random_seed(0)
    layer = LoRADense(4, rank=2)
    x = _x()
    np.testing.assert_allclose(layer(x).numpy(), layer(x, adapter=True).numpy(), atol=1e-6)


def test_adapter_gradients_reach_only_a_and_b():
    tf.keras.utils.set_random_seed(0)
    layer = LoRADense(4, rank=2, base_trainable=True)
    x = _x()
    layer(x)
    layer.lora_b.assign(tf.random.normal(layer.lora_b.shape))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, adapter=True) ** 2)
    grads = dict(zip([v.name for v in layer.trainable_variables],
                     tape.gradient(loss, layer.trainable_variables)))
    assert {n for n, g in grads.items() if g is not None} == {v.name for v in layer.adapter_variables}
    assert all(np.abs(grads[v.name].numpy()).max() > 0 for v in layer.adapter_variables)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(loss, [layer.kernel, layer.bias, layer.lora_a])
    assert grads[0] is not None and grads[1] is not None and grads[2] is None


def test_merge_gives_identical_outputs():
    tf.keras.utils.set_random_seed(0)
    layer = LoRADense(7, rank=3, alpha=6.0)
    x = _x(shape=(9, 5))
    layer(x)
    layer.lora_b.assign(tf.random.normal(layer.lora_b.shape))
    merged = layer.merge()
    adapted = layer(x, adapter=True).numpy()
    assert np.abs(adapted - layer(x).numpy()).max() > 1e-2  # the adapter does something
    np.testing.assert_allclose(merged(x).numpy(), adapted, atol=1e-5)


def test_shares_the_base_kernel_of_an_existing_dense():
    tf.keras.utils.set_random_seed(0)
    dense = tf.keras.layers.Dense(4)
    x = _x()
    dense(x)
    layer = LoRADense(4, rank=2, base_layer=dense)
    np.testing.assert_allclose(layer(x, adapter=True).numpy(), dense(x).numpy(), atol=1e-6)
    assert layer.kernel is dense.kernel
    dense.kernel.assign(dense.kernel * 2.0)
    np.testing.assert_allclose(layer(x).numpy(), dense(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="units"):
        LoRADense(5, base_layer=dense)


def test_argument_validation_and_config():
    with pytest.raises(ValueError, match="`rank`"):
        LoRADense(4, rank=-1)
    with pytest.raises(ValueError, match="`units`"):
        LoRADense(0)
    layer = LoRADense(4, rank=2, alpha=3.0, base_trainable=True)
    assert LoRADense.from_config(layer.get_config()).get_config() == layer.get_config()


def test_rank_zero_is_a_frozen_layer_on_the_adapted_branch():
    """rank 0: no adapter weights; `adapter=True` gives the base output with no gradient."""
    layer = LoRADense(3, rank=0, base_trainable=True)
    x = tf.random.stateless_normal([4, 5], seed=[1, 2])
    with tf.GradientTape() as tape:
        y = layer(x, adapter=True)
    np.testing.assert_allclose(y.numpy(), layer(x).numpy(), atol=1e-6)
    assert layer.adapter_variables == [] and len(layer.trainable_variables) == 2
    assert all(g is None for g in tape.gradient(y, layer.trainable_variables))


def test_merged_adapter_gives_the_adapted_output_in_one_matmul():
    layer = LoRADense(6, rank=2, base_trainable=True)
    x = tf.random.stateless_normal([5, 4], seed=[3, 4])
    layer(x)
    layer.lora_b.assign(tf.random.stateless_normal([2, 6], seed=[5, 6]))
    adapted = layer(x, adapter=True).numpy()
    assert np.abs(adapted - layer(x).numpy()).max() > 1e-3
    np.testing.assert_allclose(layer(x, adapter="merged").numpy(), adapted, atol=1e-5)
