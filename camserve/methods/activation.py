"""Methods that weight the activations without gradients: CAM (classifier weights), Eigen-CAM
(principal component), Score-CAM (scores of masked inputs) and Ablation-CAM (scores of ablated
activations). They still read the activations of the shared explain run."""

from __future__ import annotations

import torch

from camserve import kernels
from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions
from camserve.errors import UnsupportedError
from camserve.kernels import reference
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


@register
class CAM(CamMethod):
    """CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016,
    arXiv:1512.04150), for heads y^c = sum_k W_ck (1/Z) sum_ij A_ij^k + b_c (global average
    pooling then one linear layer)::

        L^c = ReLU(sum_k W_ck A^k)

    W comes from the model directory's ``cam_weights.npz``, written only for such heads.
    """

    name = "cam"
    requires = frozenset({"cam_weights"})
    cost = "nothing beyond the shared explain run (needs a GAP -> linear head)"
    not_in_graph = ""
    logit_targets_only = True  # W_c weighs the logit of class c

    @staticmethod
    def _no_class_weights(model: str) -> UnsupportedError:
        return UnsupportedError(
            f"methods: 'cam' needs a head that is global average pooling followed by one linear layer, "
            f"and {model} has another head, so it has no class weights to use "
            f"(use 'gradcam': on a GAP -> linear head it gives CAM's map)"
        )

    def compute(self, ctx: MethodContext) -> MethodMaps:
        if ctx.cam_weights is None:
            raise self._no_class_weights(f"model {ctx.model_name!r}")
        activations = ctx.outputs.activations
        class_weights = ctx.cam_weights.to(device=activations.device, dtype=activations.dtype)
        if class_weights.shape[1] != activations.shape[1]:
            raise UnsupportedError(
                f"methods: 'cam': the classifier weights have {class_weights.shape[1]} inputs but the "
                f"target layer of model {ctx.model_name!r} has {activations.shape[1]} channels"
            )
        weights = class_weights[ctx.outputs.target_ids.to(activations.device)]  # [N,T,K]
        return MethodMaps(self.weighted_maps(ctx, weights))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        if class_weights is None:
            raise self._no_class_weights("this model")
        return reference.weighted_sum_relu(activations, class_weights[target_ids])


@register
class EigenCAM(CamMethod):
    """Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
    IJCNN 2020, arXiv:2008.00299). With M [Z,K] the activations as rows of pixels and
    M = U S V^T its singular value decomposition::

        L = ReLU(s * M v_1)        s = +-1 chosen so that sum_ij (M v_1)_ij >= 0

    The sign of a singular vector is arbitrary; the sign fix makes the map follow the activation
    mass. Class-agnostic: every target of an image gets the same map.
    """

    name = "eigencam"
    layer_fusion = "mean"
    eigen_smoothable = False  # already the principal component (pytorch-grad-cam ignores it too)
    not_in_graph = "it needs an eigendecomposition (or SVD), which ONNX has no operator for"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        activations = ctx.outputs.activations
        n, k, h, w = activations.shape
        pixels = activations.reshape(n, k, h * w).transpose(1, 2)  # [N,Z,K]
        # v_1 is the top eigenvector of M^T M [K,K]: cheaper than the SVD of M (3x here), and in
        # float64 the squared condition number costs no accuracy.
        gram = pixels.transpose(1, 2).double() @ pixels.double()
        _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
        top = vectors[:, :, -1].to(pixels.dtype)  # [N,K]
        projection = (pixels @ top.unsqueeze(-1)).squeeze(-1)  # [N,Z]
        sign = torch.where(projection.sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)
        maps = (projection * sign).clamp_min(0).reshape(n, 1, h, w)
        num_targets = ctx.outputs.target_ids.shape[1]
        return MethodMaps(maps.expand(n, num_targets, h, w).contiguous())


@register
class ScoreCAM(CamMethod):
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR-W 2020, arXiv:1910.01279)::

        H^k   = minmax(up(A^k))                 channel k upsampled to H x W, scaled to [0, 1]
        s_k^c = y^c(x * H^k)                    class score (logit) of the masked input
        w^c   = softmax_k(s^c)
        L^c   = ReLU(sum_k w_k^c A^k)

    x is the preprocessed input, so a masked-out pixel becomes the dataset mean. Channels whose
    activation is constant (max - min <= eps) give no mask and get weight 0, as in the authors'
    code. ``score_top_n`` > 0 keeps only the N channels with the largest mean activation (the others
    weigh 0): N forward images per image instead of K. Masked images run through the forward graph
    in batches of ``runtime.max_graph_batch``.
    """

    name = "scorecam"
    not_in_graph = "it runs the model again on K masked copies of every image"
    requires = frozenset({"forward"})
    cost = "K forward images per image (K channels, or score_top_n), batched"
    logit_targets_only = True  # scores the masked images by the forward graph's logits

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        top_n = options.score_top_n
        return {"masked forward": top_n if 0 < top_n < channels else channels}

    def compute(self, ctx: MethodContext) -> MethodMaps:
        activations = ctx.outputs.activations
        target_ids = ctx.outputs.target_ids.to(activations.device)
        n, k, _, _ = activations.shape
        eps = ctx.options.eps
        spread = activations.amax(dim=(-2, -1)) - activations.amin(dim=(-2, -1))
        selected = spread > eps  # [N,K]
        top_n = ctx.options.score_top_n
        if 0 < top_n < k:
            top = activations.mean(dim=(-2, -1)).topk(top_n, dim=1).indices
            selected &= torch.zeros_like(selected).scatter_(1, top, True)
        scores = torch.full((n, target_ids.shape[1], k), float("-inf"), device=activations.device)
        images = ctx.images.to(activations.device)
        image_idx, channel_idx = selected.nonzero().unbind(dim=1)  # one masked image per pair

        def masked_scores(items: slice) -> torch.Tensor:
            masks = kernels.upsample_normalize(
                activations[image_idx[items], channel_idx[items]].unsqueeze(0),
                ctx.input_size,
                True,
                eps,
                backend=ctx.backend,
            )[0]  # [B,H,W]
            masked = images[image_idx[items]] * masks.unsqueeze(1)
            logits = ctx.runner.forward(masked).to(activations.device)
            return logits.gather(1, target_ids[image_idx[items]])  # [B,T]

        if len(image_idx):
            scores[image_idx, :, channel_idx] = run_in_chunks(
                masked_scores, len(image_idx), ctx.runtime.max_graph_batch
            )
        # An image without a single selected channel has all scores -inf: softmax gives NaN -> 0.
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return MethodMaps(self.weighted_maps(ctx, weights))


@register
class AblationCAM(CamMethod):
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020)::

        w_k^c = (y^c - y_k^c) / y^c             y_k^c: class score with channel k of A set to 0
        L^c   = ReLU(sum_k w_k^c A^k)

    y_k^c comes from the head graph alone (the layers after the target layer) on ablated copies
    of A, batched by ``runtime.max_graph_batch``; the body never re-runs. A channel that is zero
    everywhere is not re-run: ablating it leaves y unchanged, so w_k = 0. As in the paper's formula,
    a negative class score flips the weights' sign; w = 0 where y^c = 0.
    """

    name = "ablationcam"
    not_in_graph = "it runs the head again on K ablated copies of the activations"
    requires = frozenset({"head"})
    cost = "K head runs per image (only the layers after the target layer), batched"
    logit_targets_only = True  # scores the ablated activations by the head graph's logits

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        return {"ablated head": channels}

    def compute(self, ctx: MethodContext) -> MethodMaps:
        outputs = ctx.outputs
        activations = outputs.activations
        target_ids = outputs.target_ids.to(activations.device)
        n, k, _, _ = activations.shape
        score = outputs.logits.to(activations.device).gather(1, target_ids)  # [N,T]
        ablated_score = score.unsqueeze(-1).expand(n, score.shape[1], k).clone()
        live = activations.flatten(2).ne(0).any(dim=-1)  # [N,K]
        image_idx, channel_idx = live.nonzero().unbind(dim=1)  # one ablated copy per pair

        def ablated_scores(items: slice) -> torch.Tensor:
            images = image_idx[items]
            ablated = activations[images].clone()
            ablated[torch.arange(len(images), device=ablated.device), channel_idx[items]] = 0.0
            extra = None if outputs.extra_tokens is None else outputs.extra_tokens[images]
            logits = ctx.runner.head(ablated, extra).to(activations.device)
            return logits.gather(1, target_ids[images])  # [B,T]

        if len(image_idx):
            ablated_score[image_idx, :, channel_idx] = run_in_chunks(
                ablated_scores, len(image_idx), ctx.runtime.max_graph_batch
            )
        score = score.unsqueeze(-1)
        safe_score = torch.where(score != 0, score, 1.0)
        weights = torch.where(score != 0, (score - ablated_score) / safe_score, 0.0)
        return MethodMaps(self.weighted_maps(ctx, weights))
