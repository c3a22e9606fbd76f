"""One module per metric: CLIP similarity, LPIPS, FVD (with its I3D network), PSNR and SSIM (spec §6)."""
