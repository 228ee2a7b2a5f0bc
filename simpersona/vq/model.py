"""The behaviour-aware VQ-VAE: history -> latent -> one of K codes -> reconstruction + behaviour heads.

Encoder. Each event token (event, price bucket, gap bucket, flags) is embedded as the sum of four
embeddings; a GRU runs over the history's *real* tokens only (the left padding is packed away, so a
one-event history costs one step — most histories are short, and this is what makes one CPU thread
encode a few hundred thousand histories a second). Its last state, concatenated with an MLP of the
aggregate vector, becomes the latent.

Quantizer. `vector_quantize_pytorch.VectorQuantize`: k-means initialisation on the first batch, EMA
codebook updates, dead-code replacement from the batch, codes compared by cosine in a low-dimensional
projection (both keep many codes in use).

Decoder and heads, both on the *quantized* code: the decoder reconstructs the aggregate vector and
the event type at every sequence position (padding included, so length is reconstructed); the heads
predict purchase, cart abandonment and session depth, so that the codes separate behaviour, not noise.

API in the style of vector-quantize-pytorch: `forward(batch) -> (outputs, indices, losses)`,
`encode_indices(batch)`, `codebook`, `quantize_indices(indices)`.
"""

from __future__ import annotations

import io as _io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from vector_quantize_pytorch import VectorQuantize

from simpersona.data import io
from simpersona.vq.features import FLAG_VALUES, SEQ_COLUMNS, FeatureSpec

LOSS_NAMES: tuple[str, ...] = ("agg", "seq", "purchase", "cart_abandon", "depth")
LABELS: dict[str, str] = {"purchase": "label_purchase", "cart_abandon": "label_cart_abandon",
                          "depth": "label_depth"}


@dataclass(frozen=True)
class ModelDims:
    """Input sizes, all from the feature spec."""

    seq_len: int
    event_tokens: int
    price_tokens: int
    gap_tokens: int
    agg_width: int
    flag_tokens: int = FLAG_VALUES

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> ModelDims:
        return cls(spec.seq_len, spec.event_tokens, spec.price_buckets + 1, spec.gap_buckets + 1, spec.agg_width)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class BuyerVQVAE(nn.Module):
    def __init__(self, dims: ModelDims, hparams: Mapping, loss_weights: Mapping | None = None):
        super().__init__()
        h = dict(hparams)
        self.dims, self.hparams = dims, h
        self.loss_weights = {k: float((loss_weights or {}).get(k, 1.0)) for k in LOSS_NAMES}
        e = int(h["embed_dim"])
        self.event_emb = nn.Embedding(dims.event_tokens, e)
        self.price_emb = nn.Embedding(dims.price_tokens, e)
        self.gap_emb = nn.Embedding(dims.gap_tokens, e)
        self.flag_emb = nn.Embedding(dims.flag_tokens, e)
        self.gru = nn.GRU(e, int(h["hidden_dim"]), batch_first=True)
        self.agg_in = nn.Sequential(nn.Linear(dims.agg_width, int(h["agg_dim"])), nn.GELU())
        latent = int(h["latent_dim"])
        self.to_latent = _mlp(int(h["hidden_dim"]) + int(h["agg_dim"]), latent * 2, latent)
        self.vq = VectorQuantize(
            dim=latent,
            codebook_size=int(h["codebook_size"]),
            codebook_dim=int(h["codebook_dim"]),
            use_cosine_sim=bool(h["cosine"]),
            kmeans_init=bool(h["kmeans_init"]),
            kmeans_iters=int(h["kmeans_iters"]),
            decay=float(h["ema_decay"]),
            threshold_ema_dead_code=float(h["dead_code_threshold"]),
            commitment_weight=float(h["commitment_weight"]),
            codebook_diversity_loss_weight=float(h.get("diversity_weight", 0.0)),
            codebook_diversity_temperature=float(h.get("diversity_temperature", 100.0)),
        )
        d = int(h["decoder_dim"])
        self.decoder = nn.Sequential(nn.Linear(latent, d), nn.GELU(), nn.Linear(d, d), nn.GELU())
        self.agg_out = nn.Linear(d, dims.agg_width)
        self.seq_out = nn.Linear(d, dims.seq_len * dims.event_tokens)
        self.heads = _mlp(latent, int(h["head_dim"]), 3)  # purchase logit, cart-abandon logit, depth

    # ---- encoder

    def token_table(self) -> Tensor:
        """(event x price x gap x flags, E): the summed embedding of every possible token, so that the
        packed sequence needs one lookup per token instead of four."""
        t = (self.event_emb.weight[:, None, None, None] + self.price_emb.weight[None, :, None, None]
             + self.gap_emb.weight[None, None, :, None] + self.flag_emb.weight[None, None, None, :])
        return t.reshape(-1, t.shape[-1])

    def token_ids(self, batch: Mapping[str, Tensor]) -> Tensor:
        d = self.dims
        ev, pr, gp, fl = (batch[c].long() for c in SEQ_COLUMNS)
        return ((ev * d.price_tokens + pr) * d.gap_tokens + gp) * d.flag_tokens + fl

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, latent_dim) continuous latent, before quantization."""
        ids = self.token_ids(batch)
        n, L = ids.shape
        lengths = (batch["seq_event"] > 0).sum(1).clamp(min=1)  # an all-pad row is read as one pad token
        # left-padded -> left-aligned: row i's real tokens are its last lengths[i] columns
        cols = (torch.arange(L, device=ids.device)[None, :] + (L - lengths)[:, None]).clamp(max=L - 1)
        aligned = ids.gather(1, cols)
        packed = pack_padded_sequence(aligned, lengths.cpu(), batch_first=True, enforce_sorted=False)
        emb = self.token_table()[packed.data]
        _, h_n = self.gru(PackedSequence(emb, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
        agg = batch["agg"].to(self.agg_in[0].weight.dtype)
        return self.to_latent(torch.cat([h_n[0], self.agg_in(agg)], dim=1))

    # ---- decoder

    def decode(self, quantized: Tensor) -> dict[str, Tensor]:
        z = self.decoder(quantized)
        heads = self.heads(quantized)
        return {
            "agg": self.agg_out(z),
            "seq_logits": self.seq_out(z).view(-1, self.dims.seq_len, self.dims.event_tokens),
            "purchase_logit": heads[:, 0],
            "cart_abandon_logit": heads[:, 1],
            "depth": heads[:, 2],
        }

    def forward(self, batch: Mapping[str, Tensor], quantize: bool = True
                ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """`quantize=False` (the warm-up steps of training) feeds the continuous latent to the decoder
        and heads, so that the codebook's k-means initialisation later sees a trained latent space."""
        latent = self.encode(batch)
        if quantize:
            quantized, indices, commit = self.vq(latent)
        else:
            quantized, indices, commit = latent, torch.full_like(latent[:, 0], -1, dtype=torch.long), latent.new_zeros(())
        outputs = self.decode(quantized)
        outputs["latent"], outputs["quantized"] = latent, quantized
        losses = {"commit": commit}
        if all(col in batch for col in LABELS.values()):
            losses.update(self.reconstruction_losses(batch, outputs))
            losses["total"] = commit + sum(self.loss_weights[k] * losses[k] for k in LOSS_NAMES)
        return outputs, indices, losses

    def reconstruction_losses(self, batch: Mapping[str, Tensor], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        agg = batch["agg"].to(out["agg"].dtype)
        events = batch["seq_event"].long()
        return {
            "agg": F.mse_loss(out["agg"], agg),
            "seq": F.cross_entropy(out["seq_logits"].reshape(-1, self.dims.event_tokens).float(), events.reshape(-1)),
            "purchase": F.binary_cross_entropy_with_logits(out["purchase_logit"].float(),
                                                           batch["label_purchase"].float()),
            "cart_abandon": F.binary_cross_entropy_with_logits(out["cart_abandon_logit"].float(),
                                                               batch["label_cart_abandon"].float()),
            "depth": F.mse_loss(out["depth"].float(), batch["label_depth"].float()),
        }

    # ---- codes

    @torch.inference_mode()
    def encode_indices(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B,) code index per history: one encoder pass, no decoder (the assignment path)."""
        was_training = self.training
        self.eval()
        try:
            _, indices, _ = self.vq(self.encode(batch))
        finally:
            self.train(was_training)
        return indices

    @property
    def codebook(self) -> Tensor:
        """(K, codebook_dim) codes (l2-normalised when cosine)."""
        return self.vq.codebook

    @property
    def codebook_size(self) -> int:
        return self.vq.codebook_size

    def quantize_indices(self, indices: Tensor) -> Tensor:
        """Codebook lookup projected back to the latent: equals forward's outputs['quantized']."""
        return self.vq.get_output_from_indices(indices)


# ---- construction, saving, loading


def build_model(spec: FeatureSpec, hparams: Mapping, loss_weights: Mapping | None = None) -> BuyerVQVAE:
    return BuyerVQVAE(ModelDims.from_spec(spec), hparams, loss_weights)


def to_tensors(arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Numpy feature arrays -> tensors (sequences int64, floats float32)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


MODEL_FILE, META_FILE = "model.pt", "model.json"


def save_model(model: BuyerVQVAE, spec: FeatureSpec, model_dir: str, extra: Mapping | None = None) -> None:
    """DIR/vqvae/model/: model.pt (state dict) + model.json (dims, hyper-parameters, feature spec)."""
    buf = _io.BytesIO()
    torch.save({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                for k, v in model.state_dict().items()}, buf)
    meta = {"dims": asdict(model.dims), "hparams": model.hparams, "loss_weights": model.loss_weights,
            "feature_spec": spec.to_dict(), **(extra or {})}
    with io.open_output_stream(io.join_uri(model_dir, MODEL_FILE)) as fh:
        fh.write(buf.getvalue())
    with io.open_output_stream(io.join_uri(model_dir, META_FILE)) as fh:
        fh.write(json.dumps(meta, indent=2).encode())


def read_bytes(uri: str) -> bytes:
    fs, path = io.resolve(uri)
    if fs.get_file_info(path).type.name != "File":
        raise FileNotFoundError(f"no file at {uri}")
    with fs.open_input_stream(path) as fh:
        return fh.read()


def load_model(model_dir: str) -> tuple[BuyerVQVAE, FeatureSpec, dict]:
    """(model in eval mode, the feature spec it was trained on, its metadata) from DIR/vqvae/model/."""
    try:
        meta = json.loads(read_bytes(io.join_uri(model_dir, META_FILE)))
        state = torch.load(_io.BytesIO(read_bytes(io.join_uri(model_dir, MODEL_FILE))), map_location="cpu")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no trained VQ-VAE in {model_dir} ({exc}); run train_vqvae first") from None
    spec = FeatureSpec.from_dict(meta["feature_spec"], io.join_uri(model_dir, META_FILE))
    model = BuyerVQVAE(ModelDims(**meta["dims"]), meta["hparams"], meta["loss_weights"])
    model.load_state_dict(state)
    return model.eval(), spec, meta
