"""Exact-symmetry data augmentation of compressor inputs (``train.augment: true``).

Each training map is replaced by its image under a symmetry drawn uniformly from a finite
group that leaves the statistics of the field unchanged, so the loss is unchanged in
expectation and the compressor is trained towards invariance:

- flat square maps (networks ``resnet2d``, ``hybrid2d``): the 8 elements of the dihedral group
  of the square, rotations by multiples of 90 degrees and their compositions with the transpose
  (:func:`square_symmetry`). On a periodic grid they permute the Fourier modes within each
  |k| shell, so the power spectrum, and the hybrid's bandpower branch, are exactly invariant;
  the CNN branch is not equivariant to them (its kernels are free), it is only augmented.
- HEALPix maps (``healpix_cnn``, ``hybrid_healpix``): the rotations by multiples of 90 degrees
  about the polar axis that map the footprint onto itself (:func:`healpix_rotation_indices`).
  They permute the pixels and keep compass directions, so the HEALPix CNN is equivariant to
  them (its output is invariant on a footprint they preserve): augmentation changes nothing
  for it beyond the batch statistics, and is offered for uniformity.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["square_symmetry", "healpix_rotation_indices", "Augmentation"]


def square_symmetry(x: torch.Tensor, element: int) -> torch.Tensor:
    """Element ``element`` (0-7) of the dihedral group of the square acting on the last two axes
    of x (..., n, n): a rotation by 90 degrees ``element % 4`` times, then a transpose if
    ``element >= 4``. Element 0 is the identity."""
    if not 0 <= element < 8:
        raise ValueError(f"square symmetry element must be in 0..7, got {element}")
    out = torch.rot90(x, element % 4, dims=(-2, -1))
    return out.transpose(-2, -1) if element >= 4 else out


def healpix_rotation_indices(nside: int, pixels: np.ndarray | None) -> list[np.ndarray]:
    """Gathers that rotate footprint maps by multiples of 90 degrees about the polar axis.

    Returns, for every k in 0..3 whose rotation maps the footprint onto itself (k = 0 always),
    the (P,) positions such that ``x[..., index]`` is the map x (..., P) rotated by k * 90
    degrees (NESTED footprint ``pixels``; None for the full sky).
    """
    import healpy as hp

    npix = 12 * nside**2
    pixels = np.arange(npix) if pixels is None else np.asarray(pixels, dtype=np.int64)
    position = np.full(npix, -1, dtype=np.int64)
    position[pixels] = np.arange(len(pixels))
    theta, phi = hp.pix2ang(nside, pixels, nest=True)
    out = []
    for k in range(4):
        source = hp.ang2pix(nside, theta, phi - k * np.pi / 2, nest=True)  # the pixel that lands on each pixel
        if np.all(position[source] >= 0):
            out.append(position[source])
    return out


class Augmentation:
    """Random exact symmetries for the inputs of ``network`` (its ``config`` decides the group).

    ``augmentation(x, rng)`` returns x (N, ...) with every map moved by a group element drawn
    from ``rng`` (a ``numpy.random.Generator``).
    """

    def __init__(self, network_config: dict):
        kind = network_config.get("kind")
        if kind in ("resnet2d", "hybrid2d"):
            self.group = "square"
            self.size = 8
        elif kind in ("healpix_cnn", "hybrid_healpix"):
            from cosmosbi.compressors.healpix import footprint_from_ranges

            self.group = "healpix"
            footprint = network_config.get("footprint")
            pixels = None if footprint is None else footprint_from_ranges(footprint)
            self.indices = [torch.as_tensor(i) for i in healpix_rotation_indices(network_config["nside"], pixels)]
            self.size = len(self.indices)
            if self.size == 1:
                raise ValueError(
                    "train.augment: the footprint is not mapped onto itself by any 90-degree rotation "
                    "about the polar axis, so HEALPix maps on it have no exact symmetry to augment with"
                )
        else:
            raise ValueError(
                f"train.augment: network {kind!r} has no symmetry group; augment maps for "
                "resnet2d, hybrid2d, healpix_cnn or hybrid_healpix"
            )

    def apply(self, x: torch.Tensor, element: int) -> torch.Tensor:
        """Group element ``element`` (0 <= element < ``self.size``, 0 the identity) applied to maps x."""
        if self.group == "square":
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"train.augment: flat maps must be square, got shape {tuple(x.shape)}")
            return square_symmetry(x, element)
        return x[..., self.indices[element].to(x.device)]

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        elements = torch.as_tensor(rng.integers(self.size, size=len(x)), device=x.device)
        out = x.clone()
        for element in range(1, self.size):
            chosen = elements == element
            if chosen.any():
                out[chosen] = self.apply(x[chosen], element)
        return out
