"""Score-CAM's smoothed and integrated variants (torchcam's ``SSCAM`` and ``ISCAM``): S forward
images per channel instead of one, their scores averaged before the softmax.

Notation as in ``camserve.methods.activation.ScoreCAM``; as torchcam does, each channel is min-max
normalised at the target layer's resolution, then upsampled (bilinear, half-pixel centres)::

    H^k = up((A^k - min A^k) / (max A^k - min A^k + 1e-8))            [H,W]

and every channel takes part (a constant channel gives the all-zero mask). ``score_top_n`` > 0
keeps the N channels with the largest mean activation, as for Score-CAM.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F

from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


def top_channels(activations: torch.Tensor, top_n: int) -> torch.Tensor:
    """[N,K] bool: every channel, or (0 < top_n < K) the top_n with the largest mean activation."""
    n, k = activations.shape[:2]
    if not 0 < top_n < k:
        return torch.ones(n, k, dtype=torch.bool, device=activations.device)
    top = activations.mean(dim=(-2, -1)).topk(top_n, dim=1).indices
    return torch.zeros(n, k, dtype=torch.bool, device=activations.device).scatter_(1, top, True)


class SampledScoreCAM(CamMethod):
    """Score-CAM with S = ``smooth_n`` masked images per channel (sample s of channel k:
    :meth:`mask`)::

        s_k^c = (1/S) sum_s y^c(x * mask(H^k, s))
        L^c   = ReLU(sum_k softmax_k(s^c)_k A^k)
    """

    requires = frozenset({"forward"})
    cost = "smooth_n x K forward images per image (K channels, or score_top_n), batched"
    not_in_graph = "it runs the model again on smooth_n x K masked copies of every image"
    logit_targets_only = True  # scores the masked images by the forward graph's logits

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        top_n = options.score_top_n
        return {
            f"{self.name} masked forward": options.smooth_n * (top_n if 0 < top_n < channels else channels)
        }

    @abstractmethod
    def mask(
        self, masks: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, ctx: MethodContext
    ) -> torch.Tensor:
        """Sample ``samples[b]`` [B] of the masks [B,H,W] of channels ``channels[b]``."""

    def compute(self, ctx: MethodContext) -> MethodMaps:
        activations = ctx.outputs.activations
        target_ids = ctx.outputs.target_ids.to(activations.device)
        n, k, h, w = activations.shape
        samples = ctx.options.smooth_n
        image_idx, channel_idx = top_channels(activations, ctx.options.score_top_n).nonzero().unbind(dim=1)
        images = ctx.images.to(activations.device)
        low = activations.amin(dim=(-2, -1), keepdim=True)
        normalised = (activations - low) / (activations.amax(dim=(-2, -1), keepdim=True) - low + 1e-8)

        def masked_scores(items: slice) -> torch.Tensor:  # items run over (image, channel, sample)
            index = torch.arange(items.start, items.stop, device=activations.device)
            pair, sample = index // samples, index % samples
            image, channel = image_idx[pair], channel_idx[pair]
            masks = F.interpolate(
                normalised[image, channel].unsqueeze(1), ctx.input_size, mode="bilinear", align_corners=False
            )[:, 0]
            masked = images[image] * self.mask(masks, sample, channel, ctx).unsqueeze(1)
            logits = ctx.runner.forward(masked).to(activations.device)
            return logits.gather(1, target_ids[image])  # [B,T]

        scores = torch.full((n, target_ids.shape[1], k), float("-inf"), device=activations.device)
        if len(image_idx):
            per_sample = run_in_chunks(masked_scores, len(image_idx) * samples, ctx.runtime.max_graph_batch)
            scores[image_idx, :, channel_idx] = per_sample.unflatten(0, (-1, samples)).mean(dim=1)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return MethodMaps(self.weighted_maps(ctx, weights))


@register
class SSCAM(SampledScoreCAM):
    """SS-CAM (Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
    arXiv:2006.14255), torchcam's formulation: each sample adds Gaussian noise to the mask::

        mask(H^k, s) = H^k + delta_(s,k),    delta ~ N(0, sigma^2) per pixel,  sigma = smooth_sigma

    (the mask spans [0, 1], so ``smooth_sigma`` is again a fraction of its range; torchcam's
    defaults are S = 35 and sigma = 2). The noise of sample s of channel k is drawn from a generator
    seeded with (``smooth_seed``, s, k): a request is reproducible and an image's map does not
    depend on the other images of its batch.
    """

    name = "sscam"

    def mask(
        self, masks: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, ctx: MethodContext
    ) -> torch.Tensor:
        return masks + sscam_noise(ctx.options, masks.shape[-2:], samples, channels, masks.device)


def sscam_noise(
    options: ExplainOptions,
    size: torch.Size,
    samples: torch.Tensor,
    channels: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """[B,H,W]: N(0, smooth_sigma^2) noise of sample samples[b] of channel channels[b]."""
    noise = torch.empty(len(samples), *size)
    for b, (sample, channel) in enumerate(zip(samples.tolist(), channels.tolist(), strict=True)):
        generator = torch.Generator().manual_seed(hash((options.smooth_seed, sample, channel)) & (2**63 - 1))
        noise[b] = torch.randn(tuple(size), generator=generator)
    return (noise * options.smooth_sigma).to(device)


@register
class ISCAM(SampledScoreCAM):
    """IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    arXiv:2010.03023), torchcam's formulation: sample i scales the mask by a running sum::

        mask(H^k, i) = (sum_(j=1..i) j / S) H^k              i = 1..S

    Deterministic (no noise); torchcam's default is S = 10.
    """

    name = "iscam"

    def mask(
        self, masks: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, ctx: MethodContext
    ) -> torch.Tensor:
        i = samples.to(masks.dtype) + 1
        coefficient = i * (i + 1) / (2 * ctx.options.smooth_n)
        return masks * coefficient[:, None, None]
