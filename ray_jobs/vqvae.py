"""Buyer features -> behaviour-aware VQ-VAE (Ray Train) + k-means peer (run command: configs/vqvae.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("vqvae", argv, "artifacts: {out}  (model/, codebook.npy, metrics.json, summary.json); "
                                    "checkpoints: {summary[training][checkpoints]}",
                     drop=("phases_s", "latent_space"), manifest=True)


if __name__ == "__main__":
    main()
