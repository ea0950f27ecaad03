"""World model: encoder, RSSM, decoder/reward/continue heads and the loss at sampled indices.

MAMBA's loss (paper Sec. 3.3): the RSSM posterior is unrolled over the whole
sampled prefix; the prediction losses (decoder, reward, continue) are taken
at ``L_wm`` indices drawn uniformly per sequence (the KL terms over all
steps), so the cost of the heads does not grow with H'.

Observations: a ``Box`` (vector, or uint8 image ``(height, width, channels)``, or
``(channels, height, width)`` as SB3's ``VecTransposeImage`` hands it over) or a ``Dict`` of those.
Vector keys are concatenated, symlog-ed and go through an MLP; image keys through a DreamerV3 CNN
(depth 32, kernel 4, stride 2, down to 4x4). Shapes (``docs/shapes.md``): ``B`` batch, ``T`` time,
``L`` sampled indices, ``W`` reconstruction window.

The reference implementation (``reconstruction_window: 3``, on in every env)
adds a second set of heads, not described in the paper: for each sampled index
``t`` and each step ``k`` of the window ``t - p .. t + p`` (``p = (W - 1) / 2``) they
predict the observation, reward and continuation of step ``k + 1`` from the
features and the embedding of step ``k``. :func:`window_steps` gives those steps;
the pairing of features with windows follows the reference exactly (see there).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from torch import Tensor, nn

from sb3_mamba.distributions import TwoHot, categorical_kl, symlog, unimix_probs
from sb3_mamba.networks import GroupNorm, dreamer_init_, mlp
from sb3_mamba.rssm import RSSM, State

VECTOR_KEY = "vector"  # the key of a plain Box observation


def split_observation_space(
    observation_space: spaces.Space,
) -> tuple[dict[str, int], dict[str, tuple[tuple[int, int, int], bool]]]:
    """Return ({vector key: size}, {image key: ((height, width, channels), channels_first)}); ``ValueError``
    if unsupported."""
    subspaces = (
        observation_space.spaces if isinstance(observation_space, spaces.Dict) else {VECTOR_KEY: observation_space}
    )
    vectors, images = {}, {}
    for key, space in subspaces.items():
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            vectors[key] = space.shape[0]
        elif isinstance(space, spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8:
            channels_first = is_image_space_channels_first(space)
            if channels_first:
                channels, height, width = space.shape
            else:
                height, width, channels = space.shape
            if height != width or height < 8 or height & (height - 1):
                raise ValueError(f"Image observations must be square with a power-of-two size >= 8, got {space.shape}.")
            images[key] = ((height, width, channels), channels_first)
        else:
            raise ValueError(
                f"Unsupported observation space {space!r} (key '{key}'): MAMBA takes 1-D Box vectors, "
                "HxWxC uint8 Box images, or a Dict of those."
            )
    return vectors, images


def sample_valid_indices(mask: Tensor, num: int) -> Tensor:
    """(B, T) validity mask (valid steps first) -> (B, num) indices drawn uniformly, with replacement,
    from each sequence's valid steps (MAMBA's L sampled indices)."""
    lengths = mask.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
    return (torch.rand(mask.shape[0], num, device=mask.device) * lengths).long()


def gather_steps(x: Tensor, index: Tensor) -> Tensor:
    """(B, T, ...) and (B, M) step indices -> (B, M, ...) the steps of each sequence."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def window_steps(index: Tensor, mask: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's reconstruction window around sampled indices.

    index (B, L) sampled steps, mask (B, T) valid steps (valid steps first), odd ``window`` W.
    Returns (embed_step, target_step, valid), each (B, L * W), window-major within each
    sampled index: entry ``l * W + w`` is step ``k = index[l] + w - p`` (its embedding is an
    input) and step ``k + 1`` (its data is the target); ``valid`` is 0 where ``k < 0`` or
    ``k + 1`` is past the sequence's valid steps (the steps themselves are clamped into range).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"reconstruction_window must be a positive odd number, got {window}.")
    length = mask.shape[1]
    offsets = torch.arange(window, device=index.device) - (window - 1) // 2  # (W,)
    embed_step = (index.unsqueeze(-1) + offsets).flatten(1)  # (B, L * W)
    target_step = embed_step + 1  # (B, L * W)
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    valid = (embed_step >= 0) & (target_step < lengths)  # (B, L * W)
    return embed_step.clamp(0, length - 1), target_step.clamp(0, length - 1), valid.to(mask.dtype)


def window_outputs(heads: Iterable[nn.Module], feat_l: Tensor, embed: Tensor, embed_step: Tensor) -> list[Tensor]:
    """The window heads on the reference's pairing of features with windows.

    feat_l (B, L, F) features at the sampled indices, embed (B, T, E) the embeddings, embed_step
    (B, L * W) the window steps whose embeddings the heads read (:func:`window_steps`) -> each
    head's output on (B, L * W, F + E) inputs.
    The reference tiles the features (``feat.repeat(1, W, 1)``: entry j reads the features of
    sampled index j mod L) while the windows are laid out per index (entry j belongs to index
    j // W): a window's embeddings and targets meet the features of another sampled step of the
    same sequence. We pair them the same way.
    """
    window = embed_step.shape[1] // feat_l.shape[1]
    feat_tiled = feat_l.repeat(1, window, 1)  # (B, L * W, F)
    inputs = torch.cat([feat_tiled, gather_steps(embed, embed_step)], dim=-1)  # (B, L * W, F + E)
    return [head(inputs) for head in heads]


class ConvEncoder(nn.Module):
    """(n, height, width, channels) images (or channels first) in [-0.5, 0.5] -> (n, out_dim); halves the size
    per layer down to 4x4."""

    def __init__(self, shape: tuple[int, int, int], depth: int = 32, channels_first: bool = False):
        super().__init__()
        self.channels_first = channels_first
        size, _, channels = shape
        layers, in_ch, ch = [], channels, depth
        while size > 4:
            layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1, bias=False), GroupNorm(1, ch, eps=1e-3), nn.SiLU()]
            in_ch, ch, size = ch, ch * 2, size // 2
        self.net = dreamer_init_(nn.Sequential(*layers, nn.Flatten()))
        self.out_dim = in_ch * 16

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x if self.channels_first else x.permute(0, 3, 1, 2))


class ConvDecoder(nn.Module):
    """(n, feat) -> (n, height, width, channels) image mean (or channels first), mirroring :class:`ConvEncoder`."""

    def __init__(self, feat_dim: int, shape: tuple[int, int, int], depth: int = 32, channels_first: bool = False):
        super().__init__()
        self.channels_first = channels_first
        size, _, channels = shape
        num_layers = int(np.log2(size // 4))
        ch = depth * 2 ** (num_layers - 1)
        self.start_channels = ch
        self.project = nn.Linear(feat_dim, ch * 16)
        layers: list[nn.Module] = []
        for i in range(num_layers):
            last = i == num_layers - 1
            out_ch = channels if last else ch // 2
            layers.append(nn.ConvTranspose2d(ch, out_ch, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [GroupNorm(1, out_ch, eps=1e-3), nn.SiLU()]
            ch = out_ch
        self.net = nn.Sequential(*layers)
        # as the reference: all but the output layer by weight_init; its uniform re-draw of the output
        # layer touches Linear layers only, so the last transposed conv keeps torch's default
        output_layer = copy.deepcopy(self.net[-1])
        dreamer_init_(self)
        self.net[-1].load_state_dict(output_layer.state_dict())

    def forward(self, feat: Tensor) -> Tensor:
        return self.from_projection(self.project(feat))

    def from_projection(self, projected: Tensor) -> Tensor:
        """(..., channels * 16) output of :attr:`project` -> (n, height, width, channels) images."""
        x = self.net(projected.reshape(-1, self.start_channels, 4, 4))
        return x if self.channels_first else x.permute(0, 2, 3, 1)


class WorldModel(nn.Module):
    """Encoder + RSSM + heads.

    :param observation_space: see :func:`split_observation_space`.
    :param action_dim: action vector size (one-hot size for Discrete).
    :param units: width of the decoder/reward/continue MLPs (MAMBA 128).
    :param head_layers: hidden layers of the reward/continue heads.
    :param encoder_units, encoder_layers: the vector encoder/decoder MLP.
    :param cnn_depth: channels of the first conv layer (doubling per layer).
    :param deter, stoch, classes, hidden, unimix: the RSSM (see :class:`RSSM`).
    :param reconstruction_window: W, the window of the reference's extra heads (module docstring);
        odd, 0 turns them off (default 3, the reference's).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_dim: int,
        units: int = 128,
        head_layers: int = 2,
        encoder_units: int = 512,
        encoder_layers: int = 2,
        cnn_depth: int = 32,
        deter: int = 512,
        stoch: int = 16,
        classes: int = 16,
        hidden: int = 64,
        unimix: float = 0.01,
        reconstruction_window: int = 3,
    ):
        super().__init__()
        self.vector_sizes, self.image_shapes = split_observation_space(observation_space)
        self.vector_keys = sorted(self.vector_sizes)
        self.vector_dim = sum(self.vector_sizes.values())
        embed_dim = 0
        if self.vector_dim:
            self.vector_encoder = mlp(self.vector_dim, encoder_units, encoder_layers)
            embed_dim += encoder_units
        self.image_encoders = nn.ModuleDict(
            {k: ConvEncoder(shape, cnn_depth, first) for k, (shape, first) in self.image_shapes.items()}
        )
        embed_dim += sum(
            encoder.out_dim for encoder in self.image_encoders.values() if isinstance(encoder, ConvEncoder)
        )
        self.embed_dim = embed_dim
        self.rssm = RSSM(embed_dim, action_dim, deter=deter, stoch=stoch, classes=classes, hidden=hidden, unimix=unimix)
        feat = self.rssm.feat_dim
        if self.vector_dim:
            self.vector_decoder = mlp(feat, encoder_units, encoder_layers, out_dim=self.vector_dim)
        self.image_decoders = nn.ModuleDict(
            {k: ConvDecoder(feat, shape, cnn_depth, first) for k, (shape, first) in self.image_shapes.items()}
        )
        self.two_hot = TwoHot()
        self.reward_head = mlp(feat, units, head_layers, out_dim=self.two_hot.num_bins, zero_out=True)
        self.continue_head = mlp(feat, units, head_layers, out_dim=1)

        if reconstruction_window < 0 or (reconstruction_window and reconstruction_window % 2 == 0):
            raise ValueError(f"reconstruction_window must be 0 or odd, got {reconstruction_window}.")
        self.reconstruction_window = reconstruction_window
        self.window_heads = nn.ModuleDict()
        if reconstruction_window:
            # the same shapes as the heads above, reading [features, embedding]
            feat_embed = feat + embed_dim
            if self.vector_dim:
                self.window_heads["vector"] = mlp(feat_embed, encoder_units, encoder_layers, out_dim=self.vector_dim)
            for key, (shape, first) in self.image_shapes.items():
                self.window_heads[f"image_{key}"] = ConvDecoder(feat_embed, shape, cnn_depth, first)
            self.window_heads["reward"] = mlp(
                feat_embed, units, head_layers, out_dim=self.two_hot.num_bins, zero_out=True
            )
            # (the key is not "continue": torch.fx cannot name a module after a keyword)
            self.window_heads["cont"] = mlp(feat_embed, units, head_layers, out_dim=1)

    # -- observations --------------------------------------------------------------
    def preprocess(self, obs: Any) -> dict[str, Tensor]:
        """Observation tensors (..., *shape) -> {"vector": (..., size) float,
        image key: (..., height, width, channels) in [-0.5, 0.5]}."""
        if not isinstance(obs, dict):
            obs = {VECTOR_KEY: obs}
        out = {}
        if self.vector_dim:
            out[VECTOR_KEY] = torch.cat([obs[k].float() for k in self.vector_keys], dim=-1)
        for key in self.image_shapes:
            out[key] = obs[key].float() / 255.0 - 0.5
        return out

    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        """Preprocessed observations (..., ...) -> (..., E) embedding."""
        parts = []
        if self.vector_dim:
            parts.append(self.vector_encoder(symlog(obs[VECTOR_KEY])))
        for key, encoder in self.image_encoders.items():
            image = obs[key]
            lead = image.shape[:-3]
            parts.append(encoder(image.reshape(-1, *image.shape[-3:])).reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    # -- loss ------------------------------------------------------------------
    def loss(
        self,
        obs: dict[str, Tensor],
        action: Tensor,
        reward: Tensor,
        terminated: Tensor,
        is_first: Tensor,
        mask: Tensor,
        num_indices: int | None,
        free_bits: float = 1.0,
        dyn_scale: float = 0.5,
        rep_scale: float = 0.1,
        observe: Callable[..., tuple[State, State]] | None = None,
        window_outputs_fn: Callable[..., list[Tensor]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], State]:
        """World-model loss on a batch of sequences.

        obs: preprocessed (B, T, ...); action (B, T, A); reward, terminated, is_first, mask (B, T).
        ``num_indices`` = L_wm prediction indices per sequence (uniform over the valid
        steps, with replacement); None takes every valid step (Dreamer's window loss).
        ``observe``: ``(rssm, embed, action, is_first) -> (post, prior)``, a backend's fast path of
        :meth:`RSSM.observe` (None: :meth:`RSSM.observe` itself); ``window_outputs_fn``: a backend's
        fast path of :func:`window_outputs` (None: :func:`window_outputs` itself).
        Returns (total loss, metrics, posterior states (B, T, ...)).
        """
        embed = self.encode(obs)  # (B, T, E)
        if observe is None:
            post, prior = self.rssm.observe(embed, action, is_first)
        else:
            post, prior = observe(self.rssm, embed, action, is_first)
        maskf = mask.float()
        valid = maskf.sum().clamp_min(1.0)

        # KL balancing with free bits, over all valid steps (B, T)
        post_probs = unimix_probs(post["logits"], self.rssm.unimix)
        prior_probs = unimix_probs(prior["logits"], self.rssm.unimix)
        dyn = categorical_kl(post_probs.detach(), prior_probs)
        rep = categorical_kl(post_probs, prior_probs.detach())
        dyn_loss = (dyn.clamp_min(free_bits) * maskf).sum() / valid
        rep_loss = (rep.clamp_min(free_bits) * maskf).sum() / valid

        # prediction losses at sampled indices
        feat = RSSM.feat(post)  # (B, T, F)
        if num_indices is None:
            index_mask = maskf
            index = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)  # (B, T)
            pick = lambda x: x  # noqa: E731
        else:
            index = sample_valid_indices(mask, num_indices)  # (B, L)
            index_mask = torch.ones_like(index, dtype=maskf.dtype)
            pick = lambda x: gather_steps(x, index)  # noqa: E731

        feat_l = pick(feat)  # (B, L, F)
        count = index_mask.sum().clamp_min(1.0)
        losses = {}
        if self.vector_dim:
            prediction = self.vector_decoder(feat_l)
            target = symlog(pick(obs[VECTOR_KEY]))
            losses["decoder_loss"] = (((prediction - target) ** 2).sum(-1) * index_mask).sum() / count
        for key, decoder in self.image_decoders.items():
            target = pick(obs[key])
            prediction = decoder(feat_l.reshape(-1, feat_l.shape[-1])).reshape(target.shape)
            image_loss = ((prediction - target) ** 2).sum((-3, -2, -1))
            losses[f"image_loss_{key}"] = (image_loss * index_mask).sum() / count
        reward_nll = -self.two_hot.log_prob(self.reward_head(feat_l), pick(reward))
        losses["reward_loss"] = (reward_nll * index_mask).sum() / count
        cont_target = 1.0 - pick(terminated.float())
        cont_nll = F.binary_cross_entropy_with_logits(
            self.continue_head(feat_l).squeeze(-1), cont_target, reduction="none"
        )
        losses["continue_loss"] = (cont_nll * index_mask).sum() / count
        if self.reconstruction_window:
            losses.update(
                self.window_losses(feat_l, embed, obs, reward, terminated, mask, index, index_mask, window_outputs_fn)
            )

        total = sum(losses.values()) + dyn_scale * dyn_loss + rep_scale * rep_loss
        metrics = {
            **losses,
            "dyn_loss": dyn_loss,
            "rep_loss": rep_loss,
            "kl": (dyn * maskf).sum() / valid,
            "wm_loss": total,
        }
        return total, metrics, post

    def window_losses(
        self,
        feat_l: Tensor,
        embed: Tensor,
        obs: dict[str, Tensor],
        reward: Tensor,
        terminated: Tensor,
        mask: Tensor,
        index: Tensor,
        index_mask: Tensor,
        window_outputs_fn: Callable[..., list[Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """The reference's reconstruction-window losses (module docstring).

        feat_l (B, L, F) features at the sampled ``index`` (B, L); embed (B, T, E); the data as in
        :meth:`loss`. Each loss is a mean over all B * L * W window entries, the out-of-range
        ones counted as zeros, as the reference's ``-mean(log_prob * mask)``.
        ``window_outputs_fn``: a backend's fast path of :func:`window_outputs` (None: :func:`window_outputs`).
        """
        window = self.reconstruction_window
        embed_step, target_step, valid = window_steps(index, mask, window)  # (B, L * W) each
        valid = valid * index_mask.repeat_interleave(window, dim=1)  # (B, L * W)
        count = index_mask.sum().clamp_min(1.0) * window
        heads_fn = window_outputs_fn or window_outputs
        heads = self.window_heads.values()
        outputs = dict(zip(self.window_heads, heads_fn(heads, feat_l, embed, embed_step), strict=True))
        target = lambda x: gather_steps(x, target_step)  # noqa: E731
        losses = {}
        if self.vector_dim:
            error = (outputs["vector"] - symlog(target(obs[VECTOR_KEY]))) ** 2  # (B, L * W, D)
            losses["window_decoder_loss"] = (error.sum(-1) * valid).sum() / count
        for key in self.image_shapes:
            image = target(obs[key])  # (B, L * W, height, width, channels)
            prediction = outputs[f"image_{key}"].reshape(image.shape)
            losses[f"window_image_loss_{key}"] = (((prediction - image) ** 2).sum((-3, -2, -1)) * valid).sum() / count
        reward_nll = -self.two_hot.log_prob(outputs["reward"], target(reward))  # (B, L * W)
        losses["window_reward_loss"] = (reward_nll * valid).sum() / count
        cont_nll = F.binary_cross_entropy_with_logits(
            outputs["cont"].squeeze(-1), 1.0 - target(terminated.float()), reduction="none"
        )  # (B, L * W)
        losses["window_continue_loss"] = (cont_nll * valid).sum() / count
        return losses
