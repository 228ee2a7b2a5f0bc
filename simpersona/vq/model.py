"""The behaviour-aware VQ-VAE: history -> latent -> one of K codes -> reconstruction + behaviour heads.

Encoder. Each event token (event, price bucket, gap bucket, flags) is embedded as the sum of four
embeddings; a GRU runs over the history's *real* tokens only (the left padding is packed away, so a
one-event history costs one step — most histories are short, and this is what lets one CPU thread
encode a few hundred thousand histories a second). Its last state, concatenated with an MLP of the
aggregate vector, becomes the latent.

Quantizer. `vector_quantize_pytorch.VectorQuantize`: k-means initialisation on the first batch, EMA
codebook updates, dead-code replacement from the batch, codes compared by cosine in a low-dimensional
projection. A history's type is its nearest code — one encoder pass, no decoder.

Decoder and behaviour heads, both on the quantized code. Because they read only the code, each code
decodes to a small generative model of a buyer history: the aggregate vector (Gaussian mean), the
token sequence (first-order Markov chain over events, categorical price / gap / flags per token and
the length — see simpersona.vq.sequence) and the behavioural outcomes (purchase and cart-abandonment
probabilities, session depth). That makes the training objective a mixture likelihood, trained by EM, with the encoder as its
inference network:
  E-step  every history is scored against every code's decoded model (one matrix product), giving
          responsibilities softmax(log mixing proportion - weighted NLL / em_temperature) (proportions
          when vq.model.mix_decay > 0, else equal). During the first training steps the E-step is
          instead the partition given in batch["init_code"] (the k-means peer's clusters, or those
          refined by simpersona.vq.mixture: EM initialised by k-means, as mixture models usually are).
  M-step  decoder and heads minimise the responsibility-weighted NLL; the encoder learns to put the
          history's latent nearest to its responsible code (cross-entropy over cosine logits); the
          codebook follows its histories' latents by EMA (VectorQuantize.update_indices), dead codes
          are re-seeded by the library.
Measured on the planted fixture (testkit.planted_vq, 8 types): straight-through VQ-VAE training
reached NMI ~0.45, EM from a random start ~0.76, EM started from k-means ~0.79 where k-means itself
gets ~0.74 — nearest-code assignment in a reconstruction-trained latent is a poor optimiser of the
mixture objective, scoring codes by their decoded likelihood is a direct one. The loss weights in
config weigh the terms of the E-step too (the aggregate term apart: loss.agg_estep), so the behaviour
heads shape which histories share a code. On the pipeline's synthetic data (one-view histories are 52%),
equal proportions split the large types: with proportions, agg_estep 0 and the mixture-refined start
with split-and-merge moves (configs/vq_planted.yaml) the Ray Train job reaches NMI 0.918 where k-means
gets 0.718 (0.810 without the moves).

API in the style of vector-quantize-pytorch: `forward(batch) -> (outputs, indices, losses)`,
`encode_indices(batch)`, `codebook`, `quantize_indices(indices)`.
"""

from __future__ import annotations

import io as _io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from vector_quantize_pytorch import VectorQuantize

from simpersona import storage
from simpersona.training.checkpoints import load_tensors
from simpersona.vq.config import VQLossConfig, VQModelConfig
from simpersona.vq.features import FLAG_VALUES, SEQ_COLUMNS, FeatureSpec
from simpersona.vq.sequence import log_probs, part_sizes, sequence_stats

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
        # keys a caller (or an older checkpoint) leaves out take the schema's defaults
        h = {**asdict(VQModelConfig()), **dict(hparams)}
        weights = {**asdict(VQLossConfig()), **dict(loss_weights or {})}
        self.dims, self.hparams = dims, h
        self.loss_weights = {k: float(weights[k]) for k in LOSS_NAMES}
        # the E-step may weigh the aggregate vector apart from the loss: its unit-variance Gaussian is the
        # least faithful part of a code's model, and splits large types along continuous noise
        self.estep_weights = {**self.loss_weights, "agg": float(weights["agg_estep"])}
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
        )
        d = int(h["decoder_dim"])
        self.decoder = nn.Sequential(nn.Linear(latent, d), nn.GELU(), nn.Linear(d, d), nn.GELU())
        self.agg_out = nn.Linear(d, dims.agg_width)
        self.seq_sizes = part_sizes(dims.seq_len, dims.event_tokens, dims.price_tokens, dims.gap_tokens,
                                    dims.flag_tokens)
        self.seq_out = nn.Linear(d, sum(self.seq_sizes.values()))
        self.heads = _mlp(latent, int(h["head_dim"]), 3)  # purchase logit, cart-abandon logit, depth
        # the mixture's log proportions (EMA of the E-step's responsibilities), uniform at the start
        k = int(h["codebook_size"])
        self.register_buffer("log_mix", torch.full((k,), -math.log(k)))

    # ---- encoder

    def token_table(self) -> Tensor:
        """(event x price x gap x flags, E): the summed embedding of every possible token, so that the
        packed sequence needs one lookup per token instead of four."""
        t = (self.event_emb.weight[:, None, None, None] + self.price_emb.weight[None, :, None, None]
             + self.gap_emb.weight[None, None, :, None] + self.flag_emb.weight[None, None, None, :])
        return t.reshape(-1, t.shape[-1])

    def token_ids(self, batch: Mapping[str, Tensor]) -> Tensor:
        d = self.dims
        # int32 arithmetic: ids stay below event x price x gap x flag tokens (about a thousand), and
        # int64 would double the memory traffic of the assignment pass
        ev, pr, gp, fl = (batch[c].int() for c in SEQ_COLUMNS)
        return ((ev * d.price_tokens + pr) * d.gap_tokens + gp) * d.flag_tokens + fl

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, latent_dim) continuous latent, before quantization."""
        ids = self.token_ids(batch)
        n, L = ids.shape
        lengths = (batch["seq_event"] > 0).sum(1).clamp(min=1)  # an all-pad row is read as one pad token
        # left-padded -> left-aligned: row i's real tokens are its last lengths[i] columns
        cols = (torch.arange(L, device=ids.device)[None, :] + (L - lengths)[:, None]).clamp(max=L - 1)
        packed = pack_padded_sequence(ids.gather(1, cols), lengths.cpu(), batch_first=True, enforce_sorted=False)
        emb = self.token_table()[packed.data]
        _, h_n = self.gru(PackedSequence(emb, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
        agg = batch["agg"].to(self.agg_in[0].weight.dtype)
        return self.to_latent(torch.cat([h_n[0], self.agg_in(agg)], dim=1))

    def code_logits(self, latent: Tensor) -> Tensor:
        """(B, K) similarity of each latent to each code, scaled by 1/code_temperature (cosine
        codebooks) — the encoder's side of the E-step."""
        z = self.vq.project_in(latent)
        codes = self.vq.codebook.to(z.dtype)
        if self.vq.use_cosine_sim:
            return F.normalize(z, dim=-1) @ codes.t() / float(self.hparams["code_temperature"])
        return -torch.cdist(z, codes)

    # ---- decoder

    def decode(self, quantized: Tensor) -> dict[str, Tensor]:
        z = self.decoder(quantized)
        heads = self.heads(quantized)
        return {
            "agg": self.agg_out(z),
            "seq_logits": self.seq_out(z),
            "purchase_logit": heads[:, 0],
            "cart_abandon_logit": heads[:, 1],
            "depth": heads[:, 2],
        }

    def decode_codes(self) -> dict[str, Tensor]:
        """Every code's decoded model: (K, ...) outputs of decode(codebook lookup)."""
        codes = torch.arange(self.codebook_size, device=self.vq.codebook.device)
        return self.decode(self.quantize_indices(codes).to(self.agg_out.weight.dtype))

    def code_nll(self, batch: Mapping[str, Tensor], decoded: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """(B, K) negative log-likelihood of each history under each code, per term (unweighted)."""
        agg = batch["agg"].float()
        mu = decoded["agg"].float()
        # |x - mu|^2 expanded, so that no (B, K, F) tensor is built. Unit variances: learned per-code
        # variances collapsed onto near-constant features, variances shared by all codes recovered
        # planted types less well (NMI 0.72 vs 0.77 on the synthetic data)
        sq = (agg * agg).sum(1, keepdim=True) - 2 * agg @ mu.t() + (mu * mu).sum(1)[None, :]
        seq = -(sequence_stats(batch, self.seq_sizes) @ log_probs(decoded["seq_logits"], self.seq_sizes).t())

        def bce(logit: Tensor, y: Tensor) -> Tensor:
            logit = logit.float()
            return F.softplus(logit)[None, :] - y.float()[:, None] * logit[None, :]

        depth = batch["label_depth"].float()[:, None] - decoded["depth"].float()[None, :]
        return {"agg": 0.5 * sq.clamp(min=0), "seq": seq,
                "purchase": bce(decoded["purchase_logit"], batch["label_purchase"]),
                "cart_abandon": bce(decoded["cart_abandon_logit"], batch["label_cart_abandon"]),
                "depth": 0.5 * depth * depth}

    def weighted_nll(self, terms: Mapping[str, Tensor]) -> Tensor:
        """(B, K) the E-step's score of each history under each code (lower = more likely)."""
        return sum(self.estep_weights[k] * terms[k] for k in LOSS_NAMES)

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """outputs (the nearest code's decoded model per history, latent, quantized), indices (B,) of
        the nearest code, losses (per term; `total` to minimise; training mode runs the EM step)."""
        latent = self.encode(batch)
        # the codebook moves by the E-step's assignments below, not by nearest-code usage
        quantized, indices, commit = self.vq(latent, freeze_codebook=True)
        decoded = self.decode_codes()
        outputs = {k: v[indices] for k, v in decoded.items()}
        outputs["latent"], outputs["quantized"] = latent, quantized
        losses = {"commit": commit}
        if not all(col in batch for col in LABELS.values()):
            return outputs, indices, losses
        terms = self.code_nll(batch, decoded)
        if self.training and "init_code" in batch:  # initialisation steps: the given partition is the E-step
            resp = F.one_hot(batch["init_code"].long(), self.codebook_size).to(latent.dtype)
            with torch.no_grad():
                self.vq.update_indices(latent.detach(), batch["init_code"].long())
        elif self.training:
            with torch.no_grad():
                # no mixing proportions: tried, they left planted recovery unchanged (0.768 vs 0.767)
                # and concentrated the Tmall codes (perplexity 35 vs 42)
                log_prior = self.log_mix[None, :] if self.hparams["mix_decay"] > 0 else 0.0
                resp = F.softmax(log_prior - self.weighted_nll(terms) / float(self.hparams["em_temperature"]),
                                 dim=1)
                self.vq.update_indices(latent.detach(), resp.argmax(1))
        else:
            resp = F.one_hot(indices, self.codebook_size).to(latent.dtype)
        if self.training and float(self.hparams["mix_decay"]) > 0:
            self._update_mix(resp.detach())
        for k in LOSS_NAMES:
            losses[k] = (terms[k] * resp).sum(1).mean()
        losses["code"] = -(resp * F.log_softmax(self.code_logits(latent).float(), dim=1)).sum(1).mean()
        losses["total"] = (commit + float(self.hparams["code_weight"]) * losses["code"]
                           + sum(self.loss_weights[k] * losses[k] for k in LOSS_NAMES))
        return outputs, indices, losses

    @torch.no_grad()
    def _update_mix(self, resp: Tensor) -> None:
        """EMA of the batch's share of each code, floored so that an emptied code can win histories back."""
        decay, floor = float(self.hparams["mix_decay"]), float(self.hparams["mix_floor"]) / self.codebook_size
        mix = decay * self.log_mix.exp() + (1 - decay) * resp.float().mean(0)
        mix = mix.clamp(min=floor)
        self.log_mix.copy_((mix / mix.sum()).log())

    # ---- codes

    @torch.inference_mode()
    def encode_indices(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B,) code index per history: one encoder pass, no decoder (the assignment path)."""
        was_training = self.training
        self.eval()
        try:
            # the quantizer's own choice in eval mode (nearest code: highest cosine similarity, or
            # smallest distance), without building the quantized output that assignment does not need
            return self.code_logits(self.encode(batch)).argmax(1)
        finally:
            self.train(was_training)

    @property
    def codebook(self) -> Tensor:
        """(K, codebook_dim) codes (l2-normalised when cosine)."""
        return self.vq.codebook

    @property
    def codebook_size(self) -> int:
        return self.vq.codebook_size

    def quantize_indices(self, indices: Tensor) -> Tensor:
        """Codebook lookup projected back to the latent: equals forward's outputs['quantized']."""
        codes = self.vq.get_codes_from_indices(indices)
        if isinstance(self.vq.project_out, nn.Linear):  # the codebook may be float32 under bf16 training
            codes = codes.to(self.vq.project_out.weight.dtype)
        return self.vq.project_out(codes)


# ---- construction, saving, loading


def build_model(spec: FeatureSpec, hparams: Mapping, loss_weights: Mapping | None = None) -> BuyerVQVAE:
    return BuyerVQVAE(ModelDims.from_spec(spec), hparams, loss_weights)


def to_tensors(arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Numpy feature arrays -> tensors, without copying (Arrow-backed arrays are read-only; nothing
    here writes to them, so torch's warning about that is silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


MODEL_FILE, META_FILE = "model.pt", "model.json"


def save_model(model: BuyerVQVAE, spec: FeatureSpec, model_dir: str, extra: Mapping | None = None) -> None:
    """DIR/vqvae/model/: model.pt (state dict) + model.json (dims, hyper-parameters, feature spec)."""
    buf = _io.BytesIO()
    torch.save({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                for k, v in model.state_dict().items()}, buf)
    meta = {"dims": asdict(model.dims), "hparams": model.hparams,
            "loss_weights": {**model.loss_weights, "agg_estep": model.estep_weights["agg"]},
            "feature_spec": spec.to_dict(), **(extra or {})}
    with storage.open_output_stream(storage.join_uri(model_dir, MODEL_FILE)) as fh:
        fh.write(buf.getvalue())
    with storage.open_output_stream(storage.join_uri(model_dir, META_FILE)) as fh:
        fh.write(json.dumps(meta, indent=2).encode())


def read_bytes(uri: str) -> bytes:
    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type.name != "File":
        raise FileNotFoundError(f"no file at {uri}")
    with fs.open_input_stream(path) as fh:
        return fh.read()


def load_model(model_dir: str) -> tuple[BuyerVQVAE, FeatureSpec, dict]:
    """(model in eval mode, the feature spec it was trained on, its metadata) from DIR/vqvae/model/."""
    try:
        meta = json.loads(read_bytes(storage.join_uri(model_dir, META_FILE)))
        state = load_tensors(_io.BytesIO(read_bytes(storage.join_uri(model_dir, MODEL_FILE))),
                             storage.join_uri(model_dir, MODEL_FILE), "run the vqvae stage again to rewrite it")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no trained VQ-VAE in {model_dir} ({exc}); run the vqvae stage first") from None
    spec = FeatureSpec.from_dict(meta["feature_spec"], storage.join_uri(model_dir, META_FILE))
    model = BuyerVQVAE(ModelDims(**meta["dims"]), meta["hparams"], meta["loss_weights"])
    state.setdefault("log_mix", model.log_mix)  # models saved before the mixing proportions existed
    model.load_state_dict(state)
    return model.eval(), spec, meta
