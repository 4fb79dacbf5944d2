"""LoRA-style dense adapter (Keras 2 has no built-in LoRA)."""

from em3_tf._tf import keras, tf


class LoRADense(keras.layers.Layer):
    """A dense layer with a low-rank adapter: `y = x W + b + (alpha / r) x A B`.

    `A` (`[in, r]`) is random, `B` (`[r, out]`) starts at zero, so a fresh adapter leaves the
    base output unchanged. Two ways to call it:

    - `layer(x)` or `layer(x, adapter=False)`: the plain dense output `x W + b`; `W`, `b`
      train if the base is trainable. The adapter is not used.
    - `layer(x, adapter=True)`: `x sg(W) + sg(b) + (alpha / r) x A B`: gradients reach only
      `A` and `B`, whatever the base's trainability.
    - `layer(x, adapter="merged")`: the same value in one matmul with the merged kernel
      `W + (alpha / r) A B`, for inference (no gradients are meant to flow).

    So one set of base weights can be trained fully on one branch of a model (EM3's target
    item) and adapted cheaply on another (the user's history), as in EM3.

    Args:
      units: output size.
      rank: adapter rank `r`; 0 for no adapter (then `adapter=True` gives the stop-gradient
        base output alone: a frozen layer on the adapted branch).
      alpha: scale numerator; the adapter output is multiplied by `alpha / rank`.
      use_bias: whether the base has a bias.
      base_trainable: whether `W`, `b` are trainable (`False`: classic frozen-base LoRA).
      base_layer: an existing, built `tf.keras.layers.Dense` whose kernel and bias to share
        instead of creating new ones; `units` must match it.
      kernel_initializer: initializer of `W`.

    Shapes: `[..., in] -> [..., units]`.

    Example:
    >>> layer = LoRADense(8, rank=2)
    >>> y = layer(tf.ones([3, 5]), adapter=True)   # [3, 8]
    >>> dense = layer.merge()                      # a Dense with W + (alpha/r) A B
    """

    def __init__(self, units, rank=4, alpha=8.0, use_bias=True, base_trainable=False,
                 base_layer=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"`units` must be >= 1, got {units!r}.")
        if int(rank) < 0:
            raise ValueError(f"`rank` must be >= 0, got {rank!r}.")
        if base_layer is not None:
            if not isinstance(base_layer, keras.layers.Dense) or not base_layer.built:
                raise ValueError("`base_layer` must be a built tf.keras.layers.Dense.")
            if base_layer.units != units:
                raise ValueError(f"`units` ({units}) must equal `base_layer.units` "
                                 f"({base_layer.units}).")
        self.units = int(units)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.use_bias = bool(use_bias) if base_layer is None else base_layer.use_bias
        self.base_trainable = bool(base_trainable)
        self.base_layer = base_layer
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    @property
    def scale(self):
        return self.alpha / self.rank if self.rank else 0.0

    def build(self, input_shape):
        in_dim = int(input_shape[-1])
        if self.base_layer is not None:
            self.kernel = self.base_layer.kernel
            self.bias = self.base_layer.bias
            if int(self.kernel.shape[0]) != in_dim:
                raise ValueError(f"Input size {in_dim} does not match `base_layer`'s kernel "
                                 f"{self.kernel.shape}.")
        else:
            self.kernel = self.add_weight("kernel", [in_dim, self.units],
                                          initializer=self.kernel_initializer,
                                          trainable=self.base_trainable)
            self.bias = (self.add_weight("bias", [self.units], initializer="zeros",
                                         trainable=self.base_trainable)
                         if self.use_bias else None)
        self.lora_a = self.lora_b = None
        if self.rank:
            self.lora_a = self.add_weight(
                "lora_a", [in_dim, self.rank],
                initializer=keras.initializers.HeUniform(seed=None), trainable=True)
            self.lora_b = self.add_weight("lora_b", [self.rank, self.units],
                                          initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, inputs, adapter=False):
        kernel, bias = self.kernel, self.bias
        if adapter == "merged":
            kernel, adapter = tf.stop_gradient(self.merged_kernel()), False
            bias = None if bias is None else tf.stop_gradient(bias)
        elif adapter:
            kernel = tf.stop_gradient(kernel)
            bias = None if bias is None else tf.stop_gradient(bias)
        # 2-D matmuls: much faster than broadcasting [..., in] x [in, out] (and its gradient)
        flat = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
        outputs = tf.matmul(flat, tf.cast(kernel, inputs.dtype))
        if adapter and self.rank:
            low_rank = tf.matmul(tf.matmul(flat, tf.cast(self.lora_a, inputs.dtype)),
                                 tf.cast(self.lora_b, inputs.dtype))
            outputs += self.scale * low_rank
        if bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(bias, inputs.dtype))
        outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))
        outputs.set_shape(inputs.shape[:-1].concatenate([self.units]))
        return outputs

    @property
    def adapter_variables(self):
        return [self.lora_a, self.lora_b] if self.rank else []

    def merged_kernel(self):
        """`W + (alpha / r) A B`, the kernel that gives the adapted output in one matmul."""
        if not self.rank:
            return tf.identity(self.kernel)
        return self.kernel + self.scale * tf.matmul(self.lora_a, self.lora_b)

    def merge(self, name=None):
        """A built `tf.keras.layers.Dense` whose output equals `self(x, adapter=True)`."""
        dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name=name)
        dense.build([None, int(self.kernel.shape[0])])
        weights = [self.merged_kernel().numpy()]
        if self.use_bias:
            weights.append(self.bias.numpy())
        dense.set_weights(weights)
        return dense

    def get_config(self):
        if self.base_layer is not None:
            raise NotImplementedError("A LoRADense that shares `base_layer` is serialised by "
                                      "its owner, not by config.")
        config = super().get_config()
        config.update(units=self.units, rank=self.rank, alpha=self.alpha,
                      use_bias=self.use_bias, base_trainable=self.base_trainable,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
