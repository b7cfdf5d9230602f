"""CogVideoX family (2B, 5B, 1.5-5B) through diffusers' own classes: CogVideoXTransformer3DModel,
AutoencoderKLCogVideoX, T5, CogVideoXDPMScheduler (v-prediction) and CogVideoXPipeline.

Blocks return (video tokens, text tokens); the transformer takes latents [B, F, C, H, W];
5B and 1.5 use 3D rotary positions, built here once per run as the pipeline builds them.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from tsa.configs.schema import Config
from tsa.models.family import ModelError, StudentFamily

# CogVideoX-2B's scheduler config (THUDM/CogVideoX-2b, scheduler/scheduler_config.json).
COGVIDEOX_2B_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
)


class CogVideoX(StudentFamily):
    name = "cogvideox"
    transformer_class = "CogVideoXTransformer3DModel"
    vae_class = "AutoencoderKLCogVideoX"
    pipeline_class = "CogVideoXPipeline"
    text_encoder_class = "T5EncoderModel"
    default_guidance = 6.0
    default_fps = 8
    sampler = "CogVideoXDPMScheduler/trailing"

    def check_transformer(self, transformer, cfg: Config) -> None:
        c = transformer.config
        g = cfg.geometry
        latent_c = g.latent_shape[0]
        checks = [
            (c.in_channels == latent_c,
             f"student in_channels={c.in_channels} but geometry.latent_channels={latent_c} "
             "(image-to-video models take extra channels and are not supported)"),
            (c.patch_size == g.student_patch,
             f"student patch_size={c.patch_size} but geometry.student_patch={g.student_patch}"),
            ((c.get("patch_size_t") or 1) == g.student_patch_t,
             f"student patch_size_t={c.get('patch_size_t')} but geometry.student_patch_t={g.student_patch_t} "
             "(CogVideoX1.5 patches 2 latent frames: configs/cogvideox15_5b_mtsa.yaml)"),
            (c.text_embed_dim == g.text_dim,
             f"student text_embed_dim={c.text_embed_dim} but geometry.text_dim={g.text_dim}"),
            (c.get("ofs_embed_dim") is None,
             f"student ofs_embed_dim={c.get('ofs_embed_dim')}: image-to-video models are not supported"),
            (cfg.align.loss == "none" or cfg.align.layer <= c.num_layers,
             f"align.layer={cfg.align.layer} but the student has {c.num_layers} blocks"),
        ]
        # Fixed sin-cos positions cover exactly max_text_seq_length text tokens before the video.
        if not c.use_rotary_positional_embeddings:
            checks.append((c.max_text_seq_length == g.text_length,
                           f"student max_text_seq_length={c.max_text_seq_length} but "
                           f"geometry.text_length={g.text_length}"))
        for ok, msg in checks:
            if not ok:
                raise ModelError(msg)

    def blocks(self, transformer):
        return transformer.transformer_blocks

    def block_tokens(self, output) -> torch.Tensor:
        return output[0]  # blocks return (video tokens, text tokens)

    def conditioning(self, transformer, cfg: Config, device: torch.device) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) 3D rotary tables for CogVideoX-5B and 1.5 models, exactly as
        CogVideoXPipeline._prepare_rotary_positional_embeddings builds them at this geometry;
        None for models with fixed positions (2B). Each table is [F*H*W, attention_head_dim]
        over the student grid (for 1.5, F counts temporal patches of the padded latent)."""
        c = transformer.config
        if not c.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        frames, grid_h, grid_w = cfg.geometry.student_grid
        base_h, base_w = c.sample_height // c.patch_size, c.sample_width // c.patch_size
        if c.get("patch_size_t") is None:  # CogVideoX 1.0: the grid resized into the base grid
            crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
            return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops,
                                           grid_size=(grid_h, grid_w), temporal_size=frames, device=device)
        # CogVideoX 1.5: a slice of the (sample_height, sample_width) table, one time step per patch.
        return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=None,
                                       grid_size=(grid_h, grid_w), temporal_size=frames, grid_type="slice",
                                       max_size=(base_h, base_w), device=device)

    def predict(self, transformer, noisy, text, timestep, conditioning: Any):
        pred = transformer(hidden_states=noisy.transpose(1, 2), encoder_hidden_states=text, timestep=timestep,
                           image_rotary_emb=conditioning, return_dict=False)[0]
        return pred.transpose(1, 2)

    def objective(self, scheduler_ref: str):
        from diffusers import CogVideoXDPMScheduler

        from tsa.models.objectives import DiffusionObjective

        return DiffusionObjective(CogVideoXDPMScheduler.from_pretrained(scheduler_ref, subfolder="scheduler"))

    def latent_norm(self, vae_config):
        channels = int(vae_config.get("latent_channels", 16))
        return [float(vae_config["scaling_factor"])] * channels, [0.0] * channels

    def encode_text(self, tokenizer, encoder, captions, length, device):
        """T5 over `length` tokens: padding to max length, truncation, no attention mask, as
        CogVideoXPipeline computes it."""
        tokens = tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        with torch.inference_mode():
            return encoder(tokens.input_ids.to(device))[0].float()

    def sampling_scheduler(self, scheduler_ref: str):
        from diffusers import CogVideoXDPMScheduler

        # The 2B release ships a DDIM scheduler config; CogVideoX's own inference swaps in DPM, trailing.
        cfg = CogVideoXDPMScheduler.load_config(scheduler_ref, subfolder="scheduler")
        return CogVideoXDPMScheduler.from_config(cfg, timestep_spacing="trailing")

    def call_kwargs(self, dynamic_cfg: bool) -> dict:
        return {"use_dynamic_cfg": dynamic_cfg}

    def spatial_step(self, vae_config, transformer_config):
        return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1), int(transformer_config.get("patch_size", 2))

    def temporal_compression(self, vae_config):
        return int(vae_config.get("temporal_compression_ratio", 4))

    def text_length(self, transformer_config):
        return int(transformer_config.get("max_text_seq_length", 226))

    def tiny_pipeline(self, cfg: Config, tokenizer):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
        from transformers import T5Config, T5EncoderModel

        g, ts = cfg.geometry, cfg.models.tiny_student
        c, f, h, w = g.latent_shape
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=g.text_dim, d_kv=8, d_ff=2 * g.text_dim, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
        # 16 channels from the first block: CPU conv3d with fewer channels falls back to PyTorch's
        # slow_conv3d instead of oneDNN, which made the 8-channel VAE 2.3x slower to encode. No
        # resnet in the encoder's down blocks and one in each up block (layers_per_block=0): their
        # full-resolution convolutions were most of the tiny VAE's time (now encode 2.7x, decode
        # 1.7x cheaper, bench/tiny_vae.py); the compression and the code paths are the same.
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(16, 16, 16, 16), layers_per_block=0, norm_num_groups=4, latent_channels=c,
            temporal_compression_ratio=g.vae_temporal_compression, sample_height=g.height, sample_width=g.width,
            scaling_factor=ts.vae_scaling_factor)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=ts.num_attention_heads, attention_head_dim=ts.attention_head_dim,
            in_channels=c, out_channels=c, num_layers=ts.num_layers, time_embed_dim=ts.time_embed_dim,
            text_embed_dim=g.text_dim, max_text_seq_length=g.text_length, patch_size=g.student_patch,
            patch_size_t=g.student_patch_t if g.student_patch_t > 1 else None, patch_bias=ts.patch_bias,
            sample_frames=g.num_frames, sample_height=h, sample_width=w,
            temporal_compression_ratio=g.vae_temporal_compression,
            use_rotary_positional_embeddings=ts.use_rotary_positional_embeddings)
        scheduler = CogVideoXDPMScheduler(**(COGVIDEOX_2B_SCHEDULER | {"snr_shift_scale": ts.snr_shift_scale}))
        return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                 transformer=transformer, scheduler=scheduler)


FAMILY = CogVideoX()
