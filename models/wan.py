"""Wan2.1 text-to-video family (Wan-AI/Wan2.1-T2V-1.3B-Diffusers) through diffusers' own classes:
WanTransformer3DModel, AutoencoderKLWan, UMT5, the release's UniPC flow sampler and WanPipeline.

Differences from CogVideoX that matter here: the transformer takes latents [B, C, F, H, W]
and a float timestep sigma * 1000; text enters by cross-attention, so a block returns the video
tokens alone; the objective is rectified flow (predict noise - x0); the VAE latent is normalised
per channel, (z - latents_mean) / latents_std; text embeddings are UMT5's over the real tokens
with the padded positions set to zero, as WanPipeline computes them.
"""
from __future__ import annotations

from typing import Any

import torch

from tsa.configs.schema import Config
from tsa.models.family import ModelError, StudentFamily

# The scheduler of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (scheduler/scheduler_config.json): UniPC over
# flow sigmas shifted by 3.0 (the 480p setting of Wan's own generate.py).
WAN21_SCHEDULER = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
)


class Wan(StudentFamily):
    name = "wan"
    transformer_class = "WanTransformer3DModel"
    vae_class = "AutoencoderKLWan"
    pipeline_class = "WanPipeline"
    text_encoder_class = "UMT5EncoderModel"
    default_guidance = 5.0
    default_fps = 16
    sampler = "UniPCMultistepScheduler/flow"
    joint_text = False

    def vae_dtype(self, requested: torch.dtype) -> torch.dtype:
        # WanPipeline's own example loads the VAE in float32 whatever the transformer's dtype;
        # it is small (127M parameters) and its causal 3D convolutions lose detail in bf16.
        return torch.float32

    def check_transformer(self, transformer, cfg: Config) -> None:
        c = transformer.config
        g = cfg.geometry
        patch = tuple(c.patch_size)
        checks = [
            (c.in_channels == g.latent_shape[0],
             f"student in_channels={c.in_channels} but geometry.latent_channels={g.latent_shape[0]} "
             "(image-to-video models take extra channels and are not supported)"),
            (patch == (g.student_patch_t, g.student_patch, g.student_patch),
             f"student patch_size={list(patch)} but geometry.student_patch_t, student_patch="
             f"{g.student_patch_t}, {g.student_patch}"),
            (c.text_dim == g.text_dim, f"student text_dim={c.text_dim} but geometry.text_dim={g.text_dim}"),
            (c.get("image_dim") is None, f"student image_dim={c.get('image_dim')}: image-to-video models are not supported"),
            (cfg.align.loss == "none" or cfg.align.layer <= c.num_layers,
             f"align.layer={cfg.align.layer} but the student has {c.num_layers} blocks"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ModelError(msg)

    def blocks(self, transformer):
        return transformer.blocks

    def block_tokens(self, output) -> torch.Tensor:
        return output  # the video tokens [B, F*H*W, width] (text is cross-attended, not carried)

    def predict(self, transformer, noisy, text, timestep, conditioning: Any):
        return transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    def objective(self, scheduler_ref: str):
        from diffusers import UniPCMultistepScheduler

        from tsa.models.objectives import FlowMatchObjective

        cfg = UniPCMultistepScheduler.load_config(scheduler_ref, subfolder="scheduler")
        return FlowMatchObjective(float(cfg.get("flow_shift") or 1.0), int(cfg.get("num_train_timesteps", 1000)))

    def latent_norm(self, vae_config):
        return [1.0 / float(s) for s in vae_config["latents_std"]], [float(m) for m in vae_config["latents_mean"]]

    def encode_text(self, tokenizer, encoder, captions, length, device):
        """UMT5 with the attention mask over `length` tokens; positions past each caption's
        tokens set to zero (WanPipeline._get_t5_prompt_embeds), captions cleaned as it does."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = tokenizer([prompt_clean(c) for c in captions], padding="max_length", max_length=length,
                           truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        with torch.inference_mode():
            out = encoder(tokens.input_ids.to(device), mask).last_hidden_state.float()
        return out * mask.gt(0).unsqueeze(-1)

    def sampling_scheduler(self, scheduler_ref: str):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_pretrained(scheduler_ref, subfolder="scheduler")

    def spatial_step(self, vae_config, transformer_config):
        return int(vae_config.get("scale_factor_spatial", 8)), int(transformer_config.get("patch_size", [1, 2, 2])[-1])

    def temporal_compression(self, vae_config):
        return int(vae_config.get("scale_factor_temporal", 4))

    def text_length(self, transformer_config):
        return 512  # WanPipeline's max_sequence_length

    def tiny_pipeline(self, cfg: Config, tokenizer):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        g, ts = cfg.geometry, cfg.models.tiny_student
        c = g.latent_shape[0]
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=g.text_dim, d_kv=8, d_ff=2 * g.text_dim, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
        defaults = _release_latent_stats()
        # dim_mult all 1 and no resnet in the encoder's down blocks (num_res_blocks=0; one in each of the
        # decoder's): the smallest VAE with the release's x8 spatial, x4 temporal compression (encode
        # 17x, decode 2x cheaper on a CPU than with 1, docs/benchmarks.md).
        vae = AutoencoderKLWan(base_dim=16, z_dim=c, dim_mult=[1, 1, 1, 1], num_res_blocks=0,
                               temperal_downsample=[False, True, True],
                               latents_mean=defaults[0][:c], latents_std=defaults[1][:c])
        width = ts.num_attention_heads * ts.attention_head_dim
        transformer = WanTransformer3DModel(
            patch_size=(g.student_patch_t, g.student_patch, g.student_patch),
            num_attention_heads=ts.num_attention_heads, attention_head_dim=ts.attention_head_dim,
            in_channels=c, out_channels=c, text_dim=g.text_dim, freq_dim=ts.time_embed_dim, ffn_dim=2 * width,
            num_layers=ts.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
        scheduler = UniPCMultistepScheduler(**WAN21_SCHEDULER)
        return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                           scheduler=scheduler)


def _release_latent_stats() -> tuple[list[float], list[float]]:
    """latents_mean and latents_std of the Wan2.1 VAE (diffusers' AutoencoderKLWan defaults)."""
    import inspect

    from diffusers import AutoencoderKLWan

    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    return list(params["latents_mean"].default), list(params["latents_std"].default)


FAMILY = Wan()
