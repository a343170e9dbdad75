"""The strong-lens simulator's model in lenstronomy's terms, for cross-checks against lenstronomy.

lenstronomy (``pip install lenstronomy``) is imported only when these functions run. The
mapping of conventions:

- the SIE (lenstronomy ``SIE``): the same theta_E, (e1, e2), centre; external shear
  (``SHEAR``) about the lens centre with the same (gamma1, gamma2);
- subhalos (``TNFW``): :func:`cosmosbi.simulators.subhalos.lenstronomy_tnfw_kwargs`;
- the source (``SERSIC_ELLIPSE``): the same R_e, n, (e1, e2), centre, and amplitude = the
  brightness at R_e in electrons per arcsec^2. lenstronomy uses b_n = 1.9992 n - 0.3271 where
  the simulator uses the exact gammaincinv(2n, 1/2): :func:`lenstronomy_sersic_constant`
  makes the simulator use lenstronomy's for a comparison;
- pixels and PSF: the same pixel grid (pixel centres at (i - (n - 1) / 2) pixel_scale), the
  same supersampling, and the simulator's kernel at the ray spacing given as a supersampled
  PIXEL PSF with ``supersampling_convolution=True`` (the PSF applied on the ray grid, then the
  average over each pixel).
"""

from __future__ import annotations

import contextlib

import numpy as np

from cosmosbi.simulators.lens_profiles import sersic_amplitude
from cosmosbi.simulators.subhalos import SubhaloPopulation, lenstronomy_tnfw_kwargs

__all__ = ["lenstronomy_image_model", "lenstronomy_kwargs", "lenstronomy_sersic_constant"]


def lenstronomy_image_model(sim, n_subhalos: int):
    """A lenstronomy ``ImageModel`` of ``sim`` (a StrongLensSimulator with the SIE and no lens
    light) for images with ``n_subhalos`` subhalos."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    if sim.main_deflector != "sie" or sim.lens_light:
        raise ValueError("lenstronomy_image_model: expected a simulator with main_deflector='sie' and no lens light")
    inst = sim.instrument
    n, scale, ss = inst.n_pixels, inst.pixel_scale_arcsec, inst.supersampling
    corner = -(n - 1) / 2 * scale
    data = ImageData(
        image_data=np.zeros((n, n)), transform_pix2angle=np.eye(2) * scale, ra_at_xy_0=corner, dec_at_xy_0=corner
    )
    psf = PSF(psf_type="PIXEL", kernel_point_source=sim.psf_kernel, point_source_supersampling_factor=ss)
    numerics = {"supersampling_factor": ss, "supersampling_convolution": ss > 1, "supersampling_kernel_size": None}
    if ss == 1:
        psf = PSF(psf_type="PIXEL", kernel_point_source=sim.psf_kernel)
        numerics = {"supersampling_factor": 1}
    lens = LensModel(["SIE", "SHEAR"] + ["TNFW"] * n_subhalos)
    return ImageModel(
        data, psf, lens_model_class=lens, source_model_class=LightModel(["SERSIC_ELLIPSE"]), kwargs_numerics=numerics
    )


def lenstronomy_kwargs(sim, nuisance: dict[str, np.ndarray], population: SubhaloPopulation, i: int):
    """(kwargs_lens, kwargs_source) of image i: ``nuisance`` as from ``sim.draw_parameters``."""
    g = {k: float(v[i]) for k, v in nuisance.items()}
    kwargs_lens = [
        dict(theta_E=g["theta_E"], e1=g["lens_e1"], e2=g["lens_e2"], center_x=g["lens_x"], center_y=g["lens_y"]),
        dict(gamma1=g["shear_g1"], gamma2=g["shear_g2"], ra_0=g["lens_x"], dec_0=g["lens_y"]),
    ] + lenstronomy_tnfw_kwargs(population)
    amp = float(sersic_amplitude(sim.instrument.counts(g["src_mag"]), g["src_R_e"], g["src_n"]))
    kwargs_source = [
        dict(
            amp=amp,
            R_sersic=g["src_R_e"],
            n_sersic=g["src_n"],
            e1=g["src_e1"],
            e2=g["src_e2"],
            center_x=g["src_x"],
            center_y=g["src_y"],
        )
    ]
    return kwargs_lens, kwargs_source


@contextlib.contextmanager
def lenstronomy_sersic_constant():
    """Within the block, the strong-lens simulator uses lenstronomy's b_n = 1.9992 n - 0.3271."""
    import cosmosbi.simulators.strong_lens as module

    exact_b = module.sersic_b
    module.sersic_b = lambda n: 1.9992 * np.asarray(n, dtype=float) - 0.3271
    try:
        yield
    finally:
        module.sersic_b = exact_b
