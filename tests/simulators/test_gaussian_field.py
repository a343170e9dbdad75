import numpy as np
import pytest
from scipy import stats

from cosmosbi.compressors.summaries import flat_power_spectrum
from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.simulators import GaussianField2D, HealpixGaussianField

THETA = {"power_law": np.array([1.0, 2.0]), "running_noise": np.array([1.0, 2.0, 0.1, 0.02])}


def simulate(sim, theta, n, seed):
    return next(iter(sim.simulate(np.tile(theta, (n, 1)), np.random.default_rng(seed)).values()))


def test_flat_field_shape_dtype_and_zero_mean():
    sim = GaussianField2D(n_pixels=16)
    field = simulate(sim, THETA["power_law"], 3, 0)
    assert field.shape == (3, 16, 16) and field.dtype == np.float32
    np.testing.assert_allclose(field.mean(axis=(1, 2)), 0.0, atol=1e-6)


@pytest.mark.parametrize("model", ["power_law", "running_noise"])
def test_flat_power_spectrum_matches_input_within_sampling_error(model):
    sim = GaussianField2D(n_pixels=32, model=model)
    theta = THETA[model]
    fields = simulate(sim, theta, 300, 1)
    edges = np.arange(0.5, 23.0, 1.5)
    _, measured, counts = flat_power_spectrum(fields, edges)
    # expected bin power and its variance: Var(sum over a bin of |X_k|^2 / n^2) = 2 sum_k P_k^2
    n = sim.n_pixels
    freq = np.fft.fftfreq(n) * n
    k = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).ravel()
    which = np.digitize(k, edges) - 1
    used = (k > 0) & (which >= 0) & (which < len(counts))
    P = sim.spectrum.power(theta[None], k[used])[0]
    expected = np.bincount(which[used], weights=P, minlength=len(counts)) / counts
    variance = 2 * np.bincount(which[used], weights=P**2, minlength=len(counts)) / counts**2 / len(fields)
    chi2 = np.sum((measured.mean(0) - expected) ** 2 / variance)
    assert chi2 < stats.chi2.ppf(0.999, len(counts)), chi2


def brute_force_log_likelihood(sim, theta, x):
    """ln N(x; 0, C) on the (n^2 - 1)-dimensional zero-mean subspace, C from the correlation function."""
    n = sim.n_pixels
    freq = np.fft.fftfreq(n) * n
    k = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    P = np.zeros_like(k)
    P[k > 0] = sim.spectrum.power(theta[None], k[k > 0])[0]
    xi = np.fft.ifft2(P).real  # correlation function
    ix, iy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ix, iy = ix.ravel(), iy.ravel()
    C = xi[(ix[:, None] - ix[None, :]) % n, (iy[:, None] - iy[None, :]) % n]
    eigval, eigvec = np.linalg.eigh(C)
    keep = eigval > 1e-10 * eigval.max()
    proj = eigvec[:, keep].T @ x.ravel()
    return (
        -0.5 * np.sum(proj**2 / eigval[keep])
        - 0.5 * np.sum(np.log(eigval[keep]))
        - 0.5 * keep.sum() * np.log(2 * np.pi)
    )


@pytest.mark.parametrize("model", ["power_law", "running_noise"])
def test_exact_likelihood_equals_brute_force_gaussian(model):
    sim = GaussianField2D(n_pixels=6, model=model, dtype="float64")
    x = simulate(sim, THETA[model], 1, 2)[0]
    for theta in (THETA[model], THETA[model] * 1.1):
        assert sim.log_likelihood(theta, x)[0] == pytest.approx(brute_force_log_likelihood(sim, theta, x), rel=1e-9)


def numerical_hessian(f, theta, rel_step=1e-4):
    d = len(theta)
    h = rel_step * np.maximum(np.abs(theta), 1e-2)
    H = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            ei, ej = np.eye(d)[i] * h[i], np.eye(d)[j] * h[j]
            H[i, j] = (f(theta + ei + ej) - f(theta + ei - ej) - f(theta - ei + ej) + f(theta - ei - ej)) / (
                4 * h[i] * h[j]
            )
    return H


SIMULATORS = {
    "flat-power_law": lambda: GaussianField2D(n_pixels=32),
    "flat-running_noise": lambda: GaussianField2D(n_pixels=32, model="running_noise"),
    "healpix-power_law": lambda: HealpixGaussianField(nside=8),
    "healpix-running_noise": lambda: HealpixGaussianField(nside=8, model="running_noise"),
}


@pytest.mark.parametrize("name", SIMULATORS)
def test_fisher_equals_curvature_of_expected_log_likelihood(name):
    sim = SIMULATORS[name]()
    theta0 = THETA[sim.spectrum.model]
    shells = sim.expected_shell_power(theta0[None])
    H = numerical_hessian(lambda t: sim.log_likelihood_from_shells(t[None], shells)[0], theta0)
    np.testing.assert_allclose(-H, sim.fisher_matrix(theta0), rtol=1e-4, atol=1e-6 * np.abs(H).max())


def test_fisher_equals_mean_observed_curvature():
    sim = GaussianField2D(n_pixels=16)
    theta0 = THETA["power_law"]
    shells = sim.shell_power(simulate(sim, theta0, 400, 3))
    H = np.stack([numerical_hessian(lambda t: sim.log_likelihood_from_shells(t[None], s)[0], theta0) for s in shells])
    F = sim.fisher_matrix(theta0)
    # mean observed information vs Fisher, within 5 standard errors of the mean over realisations
    se = H.std(0) / np.sqrt(len(H))
    assert np.all(np.abs(-H.mean(0) - F) < 5 * se + 1e-9), (-H.mean(0), F, se)


@pytest.mark.parametrize("name", ["flat-power_law", "healpix-power_law", "flat-running_noise"])
def test_maximum_likelihood_is_near_truth(name):
    from scipy.optimize import minimize

    sim = SIMULATORS[name]()
    theta0 = THETA[sim.spectrum.model]
    x = simulate(sim, theta0, 5, 4)
    for row in x:
        shells = sim.shell_power(row)

        def nll(t):
            return -sim.log_likelihood_from_shells(t[None], shells)[0]

        fit = minimize(nll, theta0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 40000})
        # Wilks: 2 [ln L(theta_ML) - ln L(theta0)] ~ chi^2_D
        assert fit.fun <= nll(theta0)
        assert 2 * (nll(theta0) - fit.fun) < stats.chi2.ppf(0.999, len(theta0)), (fit.x, theta0)


def test_healpix_map_is_nested_and_its_spectrum_matches_input():
    import healpy as hp

    sim = HealpixGaussianField(nside=16)
    theta = THETA["power_law"]
    maps = simulate(sim, theta, 100, 5)
    assert maps.shape == (100, hp.nside2npix(16)) and maps.dtype == np.float32
    cls = np.stack([hp.anafast(hp.reorder(m.astype(float), n2r=True), lmax=sim.lmax) for m in maps])[:, 2:]
    cl_in = sim.spectrum.power(theta[None], sim.shell_k)[0]
    variance = 2 * cl_in**2 / (2 * sim.shell_k + 1) / len(maps)
    chi2 = np.sum((cls.mean(0) - cl_in) ** 2 / variance)
    assert chi2 < stats.chi2.ppf(0.999, len(cl_in)), chi2
    # NESTED ordering: the map is smoother between neighbouring NESTED indices than RING ones
    # would be after a wrong reordering
    ring = hp.reorder(maps[0], n2r=True)
    assert np.abs(np.diff(maps[0])).mean() < np.abs(np.diff(hp.reorder(ring, n2r=True))).mean()


def test_healpix_alm_recovery_is_accurate():
    import healpy as hp

    sim = HealpixGaussianField(nside=16, dtype="float64")
    ell, m = hp.Alm.getlm(sim.lmax)
    cl = np.zeros(sim.lmax + 1)
    cl[2:] = sim.spectrum.power(THETA["power_law"][None], sim.shell_k)[0]
    rng = np.random.default_rng(6)
    z = rng.standard_normal((ell.size, 2))
    alm = np.where(m == 0, z[:, 0], (z[:, 0] + 1j * z[:, 1]) / np.sqrt(2)) * np.sqrt(cl[ell])
    nested = hp.reorder(hp.alm2map(alm, 16, lmax=sim.lmax), r2n=True)
    recovered = sim.alm(nested)[0]
    assert np.max(np.abs(recovered - alm)[ell >= 2] / np.sqrt(cl[ell[ell >= 2]])) < 1e-8


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="n_pixels must be at least 4"):
        GaussianField2D(n_pixels=2)
    with pytest.raises(ValueError, match="power of two"):
        HealpixGaussianField(nside=12)
    with pytest.raises(ValueError, match="lmax must be in"):
        HealpixGaussianField(nside=8, lmax=40)


def grid_posterior_moments(sim, x, prior, n_grid=400):
    """Posterior mean and std of a 2-parameter problem on a dense grid around the mode."""
    theta_ml = exact_posterior_samples(sim, x, 200, np.random.default_rng(0)).samples.mean(0)
    width = 8 / np.sqrt(np.diag(sim.fisher_matrix(theta_ml)))
    a = np.linspace(theta_ml[0] - width[0], theta_ml[0] + width[0], n_grid)
    b = np.linspace(theta_ml[1] - width[1], theta_ml[1] + width[1], n_grid)
    A, B = np.meshgrid(a, b, indexing="ij")
    grid = np.stack([A.ravel(), B.ravel()], axis=1)
    logp = sim.log_likelihood(grid, x) + prior.log_prob(grid)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = w @ grid
    std = np.sqrt(w @ (grid - mean) ** 2)
    return mean, std


def test_emcee_exact_posterior_matches_grid_posterior():
    sim = GaussianField2D(n_pixels=16)
    x = simulate(sim, THETA["power_law"], 1, 7)[0]
    result = exact_posterior_samples(sim, x, 4000, np.random.default_rng(8))
    assert result.samples.shape == (4000, 2)
    assert 0.2 < result.acceptance < 0.9
    mean, std = grid_posterior_moments(sim, x, sim.prior)
    # with ~2000 effective samples the Monte Carlo error is ~0.02 sigma on means and ~2% on widths
    np.testing.assert_allclose(result.samples.mean(0), mean, atol=0.12 * std.max())
    np.testing.assert_allclose(result.samples.std(0), std, rtol=0.1)
