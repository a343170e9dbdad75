"""Subhalo deflections of the strong-lens simulator: the ray grid, tiles and the fast sums.

:class:`DeflectionEngine` owns the numerics of one pixel grid; the simulator
(:mod:`cosmosbi.simulators.strong_lens`) owns the model (lens, source, subhalos, PSF, noise)
and asks the engine for two things:

- the ray grid: ``ray_x``, ``ray_y`` (1, P) in arcsec, P = (n_pixels supersampling)^2, row-major,
  ``supersampling`` x ``supersampling`` rays per pixel at the centres of equal sub-cells;
- :meth:`DeflectionEngine.subhalo_brightness`: given the source brightness at the rays'
  macro-model source positions (main deflector and shear only), the brightness with the
  subhalo deflections added, on the rays where they matter to the stated tolerances.

Three controlled approximations, each of which can be switched off (``exact=True`` switches
off the last two; ``dtype="float64"`` the first):

- float32 ray tracing;
- rays only where subhalos matter (``ray_tolerance``): the rays are grouped in tiles of 4 x 4
  pixels, and a tile is traced through the subhalos only if the source brightness at one of
  its rays could change by more than ``ray_tolerance`` times the background noise sigma of a
  pixel. The bound uses |alpha_sub| <= sum_s theta_E,s^2 min(1 / d, max_r F_s(r) / r) per tile
  and the largest Sersic gradient within that deflection of the macro-model source position;
  elsewhere the macro-model brightness is kept (its error is below the bound);
- a far field for subhalos (``far_field_tolerance``): beyond the radius where the
  truncated-NFW deflection differs by less than tol = ``far_field_tolerance`` sigma / G
  (arcsec; G the largest source-brightness slope the tile's rays can see, rounded to one of
  six levels) from theta_E^2 (1 - c2 / r^2 - c3 / r^3) / r (a point mass with the first two
  terms of the large-radius expansion of the truncated NFW, in closed form), the far field is
  used, summed per tile as a local (Taylor) expansion in complex coordinates whose truncation
  error is also below tol. The subhalos closer to a tile are summed over its rays as dense
  (tile, subhalo, ray) blocks, with the far field beyond the far-field radius and the exact
  profile within it. A tile's rays sit at the same offsets from its centre for every tile, so
  the expansions are evaluated at all of them by one matrix product.

Subhalos are given as a dict of (B, S) arrays (:func:`cosmosbi.simulators.subhalos.pad_populations`):
``x``, ``y`` (arcsec), ``theta_e2`` (arcsec^2, the squared Einstein radius of a point mass of
the subhalo's total mass; 0 for padding), ``r_s`` (arcsec), ``tau`` = r_t / r_s.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from cosmosbi.simulators.lens_profiles import (
    SersicSource,
    tnfw_constants,
    tnfw_far_field_coefficients,
    tnfw_mass_fraction,
)

__all__ = ["DeflectionEngine", "c3_remainder", "TILE_PIXELS", "EXPANSION_ORDER", "CORRECTION_ORDER"]

TILE_PIXELS = 4  # side of the tiles of the deflection bound and the local expansions
EXPANSION_ORDER = 10  # K: order of the point-mass local expansion
CORRECTION_ORDER = 3  # L: order of the far-field correction expansion
PAIR_BLOCK = 1 << 18  # (tile, subhalo, ray) triples per block of the direct sum
TOLERANCE_LEVELS = 6  # far-field tolerance levels tol_min 4^k, chosen per tile from the source gradient there


def _binomial(a: float, j: int) -> float:
    """Generalised binomial coefficient binom(a, j)."""
    out = 1.0
    for i in range(j):
        out *= (a - i) / (i + 1)
    return out


@lru_cache(maxsize=None)
def _correction_signs(order: int):
    """The factors of the correction coefficients C_jk (j, k <= order): (-1)^(j+k+1) (k+1) of the
    c2 term, -theta_e2 c2 w^-1 conj(w)^-2, and -binom(-3/2, j) binom(-5/2, k) of the c3 term,
    -theta_e2 c3 w^(-3/2) conj(w)^(-5/2)."""
    n = order + 1
    sign2 = np.array([[(-1) ** (j + k + 1) * (k + 1) for k in range(n)] for j in range(n)], dtype=float)
    sign3 = np.array([[-_binomial(-1.5, j) * _binomial(-2.5, k) for k in range(n)] for j in range(n)])
    return sign2, sign3


def _int_power(x, n: int):
    """x^n for a whole n >= 1 by repeated squaring (multiplications only)."""
    out, base = None, x
    while n:
        if n & 1:
            out = base if out is None else out * base
        n >>= 1
        if n:
            base = base * base
    return out


def c3_remainder(q, order: int, q_n=None, u=None):
    """Bound on sum |binom(-3/2, j) binom(-5/2, k)| q^(j+k) over (j, k) outside [0, order]^2 (q < 0.6).

    With S_a = sum_j |binom(-a, j)| q^j = (1 - q)^-a and the tail T_a beyond ``order``, bounded by
    its first term over 1 - q (a + order + 1) / (order + 2) (the ratio of consecutive terms
    decreases towards q), the sum is at most T_3/2 S_5/2 + S_3/2 T_5/2. ``q_n`` = q^(order+1) and
    ``u`` = 1 / (1 - q), if at hand.
    """
    n = order + 1
    q_n = _int_power(q, n) if q_n is None else q_n
    u = 1.0 / (1.0 - q) if u is None else u

    def tail(a):
        return abs(_binomial(-a, n)) / (1 - q * (a + n) / (n + 1))

    return q_n * torch.sqrt(u) * u * (tail(1.5) * u + tail(2.5))


class DeflectionEngine:
    """Ray grid, tiles and subhalo deflections of an ``n_pixels`` x ``n_pixels`` image.

    Args:
        n_pixels: image side (pixels); pixel_scale_arcsec: pixel side (arcsec);
        supersampling: rays per pixel side; device: torch device; dtype: torch.float32 or float64.

    Attributes: ``ray_x``, ``ray_y`` (1, P) ray positions (arcsec, the image centred on 0);
    ``tile_x``, ``tile_y`` (1, 1, T) tile centres; ``tile_of_ray`` (P,); ``ray_of_tile`` (T, R)
    the rays of each tile (P for the slots beyond the frame); ``ray_offset_x``, ``ray_offset_y``
    (R,) the offsets of a tile's rays from its centre; ``expansion_basis`` (K + 1 + (L + 1)^2, R).
    """

    def __init__(self, n_pixels: int, pixel_scale_arcsec: float, supersampling: int, device, dtype):
        self.n_pixels, self.pixel_scale_arcsec, self.supersampling = (
            int(n_pixels),
            float(pixel_scale_arcsec),
            int(supersampling),
        )
        self.device = torch.device(device)
        self.torch_dtype = dtype
        self.complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        n, ss, scale = self.n_pixels, self.supersampling, self.pixel_scale_arcsec
        self.ray_spacing = scale / ss
        sub = (np.arange(n * ss) + 0.5) / ss - 0.5 - (n - 1) / 2  # ray positions in pixel units
        y, x = np.meshgrid(sub * scale, sub * scale, indexing="ij")
        kw = dict(device=self.device, dtype=self.torch_dtype)
        self.ray_x = torch.as_tensor(x.ravel(), **kw)[None]
        self.ray_y = torch.as_tensor(y.ravel(), **kw)[None]
        # tiles for the subhalo-deflection bound
        n_tiles = -(-n // TILE_PIXELS)
        pix_row = np.minimum(np.arange(n * ss) // ss // TILE_PIXELS, n_tiles - 1)
        tile_of_ray = (pix_row[:, None] * n_tiles + pix_row[None, :]).ravel()
        centre = ((np.arange(n_tiles) + 0.5) * TILE_PIXELS - 0.5 - (n - 1) / 2) * scale
        ty, tx = np.meshgrid(centre, centre, indexing="ij")
        self.tile_x = torch.as_tensor(tx.ravel(), **kw)[None, None]
        self.tile_y = torch.as_tensor(ty.ravel(), **kw)[None, None]
        self.tile_halfdiag = math.sqrt(2) * TILE_PIXELS * scale / 2
        self.tile_of_ray = torch.as_tensor(tile_of_ray, device=self.device)
        # the rays of each tile (row-major within the tile), n_rays for rays beyond the frame, and
        # their offsets from the tile centre, the same for every tile
        side = TILE_PIXELS * ss
        local = np.arange(side)
        iy = np.arange(n_tiles)[:, None, None, None] * side + local[None, None, :, None]
        ix = np.arange(n_tiles)[None, :, None, None] * side + local[None, None, None, :]
        inside = (iy < n * ss) & (ix < n * ss)
        ray_of_tile = np.where(inside, iy * (n * ss) + ix, (n * ss) ** 2)
        self.ray_of_tile = torch.as_tensor(ray_of_tile.reshape(n_tiles * n_tiles, side * side), device=self.device)
        self.tile_rays = side * side
        offset = ((local + 0.5) / ss - TILE_PIXELS / 2) * scale
        oy, ox = np.meshgrid(offset, offset, indexing="ij")
        self.ray_offset_x = torch.as_tensor(ox.ravel(), **kw)
        self.ray_offset_y = torch.as_tensor(oy.ravel(), **kw)
        # basis of the local expansions at the rays of a tile: conj(d)^k (k <= K), then d^j conj(d)^k (j, k <= L)
        d = ox.ravel() + 1j * oy.ravel()
        rows = [np.conj(d) ** k for k in range(EXPANSION_ORDER + 1)]
        rows += [d**j * np.conj(d) ** k for j in range(CORRECTION_ORDER + 1) for k in range(CORRECTION_ORDER + 1)]
        self.expansion_basis = torch.as_tensor(np.stack(rows), device=self.device, dtype=self.complex_dtype)

    def subhalo_brightness(
        self,
        brightness,
        bx,
        by,
        source: SersicSource,
        subhalos,
        sigma: float,
        ray_tolerance: float | None,
        far_field_tolerance: float | None,
        exact: bool = False,
        batch_pairs: int = 4_000_000,
    ):
        """Source brightness (B, P) with the subhalo deflections, on the tiles where they matter.

        Args:
            brightness: (B, P) the source's brightness at the macro-model source positions.
            bx, by: (B, P) those positions (arcsec): the rays minus the main deflector's and the
                shear's deflections.
            source: the batch's Sersic sources (brightness and slope bounds).
            subhalos: dict of (B, S) arrays x, y, theta_e2, r_s, tau (see the module docstring).
            sigma: the background noise sigma of a pixel in the units of ``brightness`` (a ray's
                brightness is the pixel value a uniform brightness would give); the tolerances
                are fractions of it.
            ray_tolerance, far_field_tolerance: see the module docstring; None switches one off.
            exact: every ray through every subhalo with the exact truncated NFW.
            batch_pairs: bound on the (tile, subhalo, ray) triples summed at once (on CPU also
                PAIR_BLOCK, which keeps the blocks in the cache).

        The work is organised by tiles of TILE_PIXELS x TILE_PIXELS pixels: every ray of a tile
        holding at least one selected ray is traced through the subhalos; a tile's rays sit at
        fixed offsets from its centre, so the local expansions are evaluated by one matrix
        product and the subhalos summed directly form dense (tile, subhalo, ray) blocks.
        """
        kw = dict(device=self.device, dtype=self.torch_dtype)
        sub = {k: torch.as_tensor(subhalos[k], **kw)[:, :, None] for k in ("x", "y", "theta_e2", "r_s", "tau")}
        n_rows, n_rays = brightness.shape
        n_tiles = self.tile_x.shape[2]
        r_min = 0.5 * self.ray_spacing  # a Sersic cusp is not resolved below half a ray spacing
        profile = None if exact else self.profile_on_grid(sub)
        if not exact and (ray_tolerance is not None or far_field_tolerance is not None):
            bound = self.deflection_bound(sub, profile)  # (B, P)
            g = source.gradient_factor
            grad = source.max_slope_within(source.radius(bx, by), bound * g, r_min) * g  # (B, P)
        if exact or ray_tolerance is None:
            used = torch.ones((n_rows, n_tiles), dtype=torch.bool, device=self.device)
        else:
            active = grad * bound > ray_tolerance * sigma
            counts = torch.zeros((n_rows, n_tiles), **kw).index_add_(1, self.tile_of_ray, active.to(self.torch_dtype))
            used = counts > 0  # the tiles holding a selected ray
        t_row, t_tile = used.nonzero(as_tuple=True)  # (M,) the tiles traced through the subhalos
        n_sub = sub["x"].shape[1]
        if exact or far_field_tolerance is None:
            direct = (sub["theta_e2"][:, :, 0] > 0)[t_row]  # (M, S)
            alpha = torch.zeros((len(t_row), self.tile_rays), device=self.device, dtype=self.complex_dtype)
            far = None
        else:
            # deflection tolerance (arcsec) per tile: far_field_tolerance sigma / max |grad I| in the tile,
            # rounded down to one of TOLERANCE_LEVELS levels tol_min 4^k
            grad_max = source.max_slope(r_min) * source.gradient_factor  # (B, 1)
            tile_grad = torch.zeros((n_rows, n_tiles), **kw).scatter_reduce(
                1, self.tile_of_ray.expand(n_rows, -1), grad, reduce="amax", include_self=True
            )
            level = torch.clamp(
                torch.floor(torch.log(grad_max / torch.clamp(tile_grad, min=1e-30)) / math.log(4.0)),
                0,
                TOLERANCE_LEVELS - 1,
            ).long()
            tol_levels = far_field_tolerance * sigma / grad_max * 4.0 ** torch.arange(TOLERANCE_LEVELS, **kw)  # (B, NL)
            c_far = self.far_field_coefficients(sub)  # (B, S, 1)
            r_far = self.far_field_radius(sub, c_far, tol_levels[:, None, :], profile)  # (B, S, NL)
            lvl = level[t_row, t_tile]  # (M,)
            r_far_tile = r_far[t_row].gather(2, lvl[:, None, None].expand(-1, n_sub, 1))[:, :, 0]  # (M, S)
            direct, coeff = self.local_expansions(sub, c_far, r_far_tile, tol_levels[t_row, lvl], t_row, t_tile)
            alpha = coeff @ self.expansion_basis  # (M, rays per tile)
            far = (r_far_tile, c_far)
        alpha = alpha + self.direct_deflection(t_row, t_tile, sub, direct, batch_pairs, far)
        # flat indices of the tiles' rays in (B, P + 1) arrays whose last column takes the padding rays
        index = (t_row[:, None] * (n_rays + 1) + self.ray_of_tile.index_select(0, t_tile)).view(-1)
        sink = torch.zeros((n_rows, 1), **kw)

        def at_rays(values):
            return torch.cat([values.expand(n_rows, -1), sink], dim=1).view(-1).index_select(0, index).view(alpha.shape)

        gbx, gby = at_rays(bx) - alpha.real, at_rays(by) - alpha.imag
        rows = source.rows(t_row)  # (M, 1) profiles
        out = torch.cat([brightness, sink], dim=1)
        out.view(-1).index_copy_(0, index, rows.brightness(rows.radius(gbx, gby)).view(-1))
        return out[:, :n_rays]

    def direct_deflection(self, t_row, t_tile, sub, direct, batch_pairs, far=None):
        """Deflection (complex, (M, rays per tile)) of the subhalos marked direct for each tile.

        The direct subhalos of each tile are gathered into a padded list and summed over the
        tile's rays as dense (tiles, subhalos, rays) blocks, the tiles sorted by the length of
        their list so that the padding stays small. ``far``: None (exact truncated NFW for
        every pair) or (r_far (M, S), c_far (B, S, 2)): then a pair farther than the tile's
        far-field radius uses the far field theta_e2 (1 - c2 / r^2 - c3 / r^3) / r, and only the
        nearer pairs the exact profile.
        """
        n_tiles_used, n_sub = direct.shape
        n_r = self.tile_rays
        alpha = torch.zeros((n_tiles_used, n_r), device=self.device, dtype=self.complex_dtype)
        counts = direct.sum(dim=1)
        if not n_tiles_used or int(counts.max()) == 0:
            return alpha
        # tiles by decreasing count; each tile's direct subhalos first
        order = torch.argsort(counts, descending=True)
        counts = counts[order]
        n_busy = int((counts > 0).sum())
        order, counts = order[:n_busy], counts[:n_busy]
        k_max = int(counts[0])
        # slot of each direct subhalo in its tile's list: the running count of direct subhalos
        chosen = direct[order]
        slot = torch.where(chosen, chosen.cumsum(dim=1) - 1, k_max)  # k_max: not listed
        which = torch.zeros((n_busy, k_max + 1), dtype=torch.long, device=self.device)
        which.scatter_(1, slot, torch.arange(n_sub, device=self.device).expand(n_busy, -1))
        which = which[:, :k_max]  # (M', K) subhalo index of each list entry
        valid = torch.arange(k_max, device=self.device)[None, :] < counts[:, None]
        lin = (t_row[order][:, None] * n_sub + which).view(-1)
        lin = torch.where(valid.view(-1), lin, 0)  # list padding points at subhalo 0 with theta_e2 = 0 below
        # one row per subhalo: x, y, theta_e2, r_s, tau, the constants of the exact profile, and c2, c3;
        # gathered once per list entry, and again at the near (tile, subhalo, ray) triples
        flat = {k: v[:, :, 0].reshape(-1) for k, v in sub.items()}
        columns = [flat["x"], flat["y"], flat["theta_e2"], flat["r_s"], flat["tau"], *tnfw_constants(flat["tau"])]
        if far is not None:
            columns += [far[1][:, :, 0].reshape(-1), far[1][:, :, 1].reshape(-1)]
        table = torch.stack(columns, dim=1)  # (B S, columns)
        entry = table.index_select(0, lin).view(n_busy, k_max, -1)
        e2 = torch.where(valid, entry[:, :, 2], torch.zeros((), dtype=self.torch_dtype))
        r_s, tau = entry[:, :, 3], entry[:, :, 4]
        wx = self.tile_x[0, 0, t_tile[order]][:, None] - entry[:, :, 0]  # (M', K) tile centre minus subhalo
        wy = self.tile_y[0, 0, t_tile[order]][:, None] - entry[:, :, 1]
        if far is not None:
            c, c3 = entry[:, :, 9], entry[:, :, 10]
            r_far2 = torch.where(valid, far[0][order].gather(1, which), torch.zeros((), dtype=self.torch_dtype)) ** 2
        ox, oy = self.ray_offset_x, self.ray_offset_y  # (rays per tile,)
        shift = n_r.bit_length() - 1 if n_r & (n_r - 1) == 0 else None
        block = batch_pairs if self.device.type == "cuda" else min(batch_pairs, PAIR_BLOCK)
        out = torch.empty((n_busy, n_r), device=self.device, dtype=self.complex_dtype)
        lo = 0
        while lo < n_busy:
            k = int(counts[lo])
            hi = min(n_busy, lo + max(1, block // (k * n_r)))
            sl = slice(lo, hi)
            dx = wx[sl, :k, None] + ox  # (m, k, r)
            dy = wy[sl, :k, None] + oy
            r2 = torch.addcmul(dx * dx, dy, dy)
            if far is None:
                pair = (sl, slice(0, k), None)
                frac = tnfw_mass_fraction(torch.sqrt(r2), r_s[pair], tau[pair])
                scale = e2[pair] * frac / torch.maximum(r2, (1e-4 * r_s[pair]) ** 2)
            else:
                inv = 1.0 / torch.clamp(r2, min=1e-30)
                # far field theta_e2 (1 - c / r^2 - c3 / r^3) / r^2 (times the offset), exact profile within r_far
                scale = e2[sl, :k, None] * inv * (1.0 - inv * (c[sl, :k, None] + c3[sl, :k, None] * torch.rsqrt(r2)))
                near = (r2 < r_far2[sl, :k, None]).view(-1).nonzero().view(-1)  # flat indices in the block
                if near.numel():
                    # their pairs' flat indices in the (M', K) lists, through a table of the block's pairs
                    in_block = near >> shift if shift is not None else near.div(n_r, rounding_mode="floor")
                    entries = (
                        (torch.arange(lo, hi, device=self.device) * k_max)[:, None]
                        + torch.arange(k, device=self.device)
                    ).view(-1)
                    q = table.index_select(0, lin.index_select(0, entries.index_select(0, in_block)))  # (N, columns)
                    r2n = r2.view(-1).index_select(0, near)
                    frac = tnfw_mass_fraction(torch.sqrt(r2n), q[:, 3], q[:, 4], tuple(q[:, 5:9].unbind(1)))
                    value = q[:, 2] * frac / torch.maximum(r2n, (1e-4 * q[:, 3]) ** 2)
                    scale.view(-1).index_copy_(0, near, value)
            out[sl] = torch.complex((scale * dx).sum(dim=1), (scale * dy).sum(dim=1))
            lo = hi
        alpha[order] = out
        return alpha

    def local_expansions(self, sub, c_far, r_far, tol, t_row, t_tile):
        """Tile-wise local expansions of the far field of the subhalos far enough from each tile.

        In complex notation the far-field deflection of subhalo s at z is
        theta_e2 (1 / conj(w) - c / (w conj(w)^2)), w = z - z_s. About a tile centre z_t,
        with W = z_t - z_s and d = z - z_t,

            1 / conj(w)          = sum_k (-conj(d))^k / conj(W)^(k+1)                (k <= K)
            1 / (w conj(w)^2)    = sum_jk (-d)^j (k+1) (-conj(d))^k / (W^(j+1) conj(W)^(k+2))  (j, k <= L)

        A pair (tile, subhalo) is expanded when every ray of the tile is beyond the far-field
        radius ``r_far`` (M, S) and the truncation error bound is below the tile's tolerance
        ``tol`` (M,); otherwise it is direct. The tiles are (``t_row``, ``t_tile``).
        Returns direct (M, S) bool and the coefficients (M, K + 1 + (L + 1)^2) (complex) of
        the basis :attr:`expansion_basis`: the deflection at the tile's rays is coeff @ basis.
        """
        K, L = EXPANSION_ORDER, CORRECTION_ORDER
        n_sub = r_far.shape[1]
        flat = {k: v[:, :, 0][t_row] for k, v in sub.items()}  # (M, S)
        h = self.tile_halfdiag
        wx = self.tile_x[0, 0, t_tile][:, None] - flat["x"]
        wy = self.tile_y[0, 0, t_tile][:, None] - flat["y"]
        dist = torch.sqrt(wx * wx + wy * wy)
        q = h / dist
        e2, c, c3 = flat["theta_e2"], c_far[:, :, 0][t_row], c_far[:, :, 1][t_row]
        # bounds on the truncation errors of the three series
        u = 1.0 / (1.0 - q)
        q_l = _int_power(q, L + 1)
        inv_d = 1.0 / dist
        inv_d2 = inv_d * inv_d
        err = (
            _int_power(q, K + 1) * u
            + c * inv_d2 * (L + 2) * q_l * u * u * u
            + c3.abs() * inv_d2 * inv_d * c3_remainder(q, L, q_l, u)
        )
        err = err * e2 * inv_d
        expand = (q < 0.6) & (dist - h >= r_far) & (err < 0.5 * tol[:, None]) & (e2 > 0)
        direct = ~expand & (e2 > 0)
        # 1 / conj(W) = W / |W|^2; pairs that are not expanded get weight 0
        inv_d2 = torch.where(expand, inv_d2, torch.zeros_like(dist))
        inv_wc = torch.complex(wx * inv_d2, wy * inv_d2)  # (M, S)
        weight = torch.where(expand, e2, torch.zeros_like(e2))
        m = len(t_row)
        coeff = torch.empty((m, K + 1 + (L + 1) ** 2), dtype=inv_wc.dtype, device=self.device)
        # A_k = (-1)^k sum_s theta_e2 conj(W)^-(k+1), accumulated power by power; the powers
        # k = 1 .. L+1 also make the corrections' right factors theta_e2 conj(W)^-(k+2) times c2 and c3 / |W|
        n_c = L + 1
        right = torch.empty((m, 4 * n_c, n_sub), dtype=self.torch_dtype, device=self.device)  # real, imaginary parts
        left = torch.empty((m, 2 * n_c, n_sub), dtype=self.torch_dtype, device=self.device)
        c3_abs = c3 * inv_d2 * dist  # c3 / |W| (0 where not expanded)
        term = inv_wc * weight
        for k in range(K + 1):
            coeff[:, k] = term.sum(dim=1) if k % 2 == 0 else -term.sum(dim=1)
            if 1 <= k <= n_c:
                re, im = term.real, term.imag
                torch.mul(re, c, out=right[:, k - 1])
                torch.mul(im, c, out=right[:, n_c + k - 1])
                torch.mul(re, c3_abs, out=right[:, 2 * n_c + k - 1])
                torch.mul(im, c3_abs, out=right[:, 3 * n_c + k - 1])
            if k < K:
                term = term * inv_wc
        # C_jk = sum_s W^-(j+1) (left) times the right factors, with the binomial coefficients of the
        # two corrections: (-1)^(j+k+1) (k+1) for c2 and -binom(-3/2, j) binom(-5/2, k) for c3 (both
        # with their minus sign), as one real batched product of real and imaginary parts
        inv_w = inv_wc.conj()
        power = inv_w
        for j in range(n_c):
            left[:, j].copy_(power.real)
            left[:, n_c + j].copy_(power.imag)
            if j < L:
                power = power * inv_w
        prod = torch.bmm(left, right.transpose(1, 2))  # (M, 2(L+1), 4(L+1))
        sign2, sign3 = (torch.as_tensor(v, device=self.device, dtype=self.torch_dtype) for v in _correction_signs(L))
        total = 0
        for block, sign in ((prod[:, :, : 2 * n_c], sign2), (prod[:, :, 2 * n_c :], sign3)):
            re = block[:, :n_c, :n_c] - block[:, n_c:, n_c:]
            im = block[:, :n_c, n_c:] + block[:, n_c:, :n_c]
            total = total + torch.complex(re * sign, im * sign)
        coeff[:, K + 1 :] = total.reshape(m, -1)
        return direct, coeff

    def deflection_bound(self, sub, profile) -> torch.Tensor:
        """Upper bound (B, P) on |alpha_sub| at every ray, from per-tile distances."""
        r, frac = profile
        g_max = (1.1 * (frac / r).max(dim=2, keepdim=True).values).to(self.torch_dtype)  # (B, S, 1): max_r F(r)/r
        d = torch.sqrt((self.tile_x - sub["x"]) ** 2 + (self.tile_y - sub["y"]) ** 2)  # (B, S, T)
        d_lo = torch.clamp(d - self.tile_halfdiag, min=0.0)
        per_tile = (sub["theta_e2"] * torch.minimum(1.0 / torch.clamp(d_lo, min=1e-12), g_max)).sum(dim=1)
        return per_tile[:, self.tile_of_ray]

    @staticmethod
    def _radius_grid(sub, n: int = 48):
        """Log-spaced radii (B, S, n) from 1e-3 r_s to 1e4 max(r_s, r_t), float64."""
        rs = sub["r_s"].double()
        top = 1e4 * torch.clamp(sub["tau"].double(), min=1.0)
        u = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=rs.device)
        return rs * 1e-3 * (top / 1e-3) ** u

    def profile_on_grid(self, sub):
        """Radii (B, S, n) and the enclosed-mass fraction F there, float64."""
        r = self._radius_grid(sub)
        return r, tnfw_mass_fraction(r, sub["r_s"].double(), sub["tau"].double())

    def far_field_coefficients(self, sub) -> torch.Tensor:
        """(c2, c3) of 1 - F(r) = c2 / r^2 + c3 / r^3 + ..., in arcsec^2 and arcsec^3 (B, S, 2) (closed form)."""
        c2, c3 = tnfw_far_field_coefficients(sub["r_s"].double(), sub["tau"].double())
        return torch.cat([c2, c3], dim=2).to(self.torch_dtype)

    def far_field_radius(self, sub, c_far, tol, profile) -> torch.Tensor:
        """Radii (B, S, NL) beyond which the far-field deflection is within tol (B, 1, NL) (arcsec) of the
        truncated NFW."""
        r, frac = profile
        c_far = c_far.double()
        far = 1.0 - c_far[:, :, :1] / (r * r) - c_far[:, :, 1:] / (r * r * r)
        err = sub["theta_e2"].double() * (far - frac).abs() / r  # (B, S, n)
        k = torch.arange(r.shape[2], device=r.device)
        out = []
        for level in range(tol.shape[2]):
            bad = err > tol[:, :, level : level + 1].double()
            last = torch.where(bad, k, torch.full_like(k, -1)).max(dim=2, keepdim=True).values
            r_next = r.gather(2, torch.clamp(last + 1, max=r.shape[2] - 1))
            out.append(torch.where(last < 0, torch.zeros_like(r_next), r_next))
        return torch.cat(out, dim=2).to(self.torch_dtype)
