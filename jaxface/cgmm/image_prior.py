"""The image prior: a linear-Gaussian model of images (the principal subspace of real faces), fitted in
closed form like the cGMM's statistics, stored with them, and used by `invert.param`'s 'pca'
parameterisation and its coefficient penalty; and its attribute-conditional form (the joint model of
joint.py written for the prior's coefficients: c | a ~ N(a W + b, diag(s^2))), so that an inversion can
start from, and be held near, the faces that carry the requested attributes (`invert.prior='conditional'`)."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxface.cgmm import joint as joint_lib


class ImagePriorError(ValueError):
    """Images that the prior cannot be fitted to."""


class ImagePrior(NamedTuple):
    """A linear-Gaussian model of images: the principal subspace of a set of training images.

    image (flattened H*W*3) = mean + (c * std) @ basis, with c ~ N(0, I) for the training images.
    """

    mean: Any  # (H*W*3,) float32: the mean image
    basis: Any  # (K, H*W*3) float32: orthonormal principal directions, by decreasing variance
    std: Any  # (K,) float32: standard deviation of the training images along each direction

    @property
    def components(self) -> int:
        return int(np.shape(self.basis)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.mean)[0])

    def describes(self, height: int, width: int) -> bool:
        """Do the arrays' shapes fit together and model (height, width, 3) images?"""
        d = int(height) * int(width) * 3
        return (np.ndim(self.basis) == 2 and np.shape(self.mean) == (d,) and np.shape(self.basis)[1] == d
                and np.shape(self.std) == (np.shape(self.basis)[0],))


def fit_image_prior(images: Any, components: int) -> tuple[ImagePrior, dict]:
    """Closed-form PCA of (N, H, W, 3) images in [0, 1]: the top `components` directions.

    Computed from the N x N Gram matrix of the centred images (N is a few thousand, much less than
    H*W*3), in float64 for a deterministic, accurate eigendecomposition. Returns the prior and a
    report: images used, components kept, fraction of the pixel variance they explain.
    """
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ImagePriorError(f"fit_image_prior needs (N, H, W, 3) images, got shape {x.shape}")
    n = x.shape[0]
    x = x.reshape(n, -1)
    components = int(components)
    if n < 2 or components < 1:
        raise ImagePriorError(f"fit_image_prior needs at least 2 images and 1 component, got {n} and {components}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    total = float(np.sum(np.maximum(eigval, 0.0)))
    # Directions with (numerically) zero variance carry no information; a rank-r set has r - 1 at most.
    keep = int(min(components, np.sum(eigval > max(total, 1e-30) * 1e-10)))
    if keep < 1:
        raise ImagePriorError("fit_image_prior: the images are all identical; there is no variation to model")
    basis = (centred.T @ eigvec[:, :keep]) / np.sqrt(eigval[:keep])  # (D, keep), orthonormal columns
    # Sign convention: the largest-magnitude pixel of every direction is positive (reproducible output).
    flip = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(keep)])
    basis = basis * flip
    std = np.sqrt(eigval[:keep] / n)
    prior = ImagePrior(mean.astype(np.float32), basis.T.astype(np.float32), std.astype(np.float32))
    report = dict(num_images=n, components=keep, explained_variance=float(np.sum(eigval[:keep]) / total)
                  if total > 0 else 1.0)
    return prior, report


def coefficients(prior: ImagePrior, images: Any) -> np.ndarray:
    """(N, H, W, 3) images -> (N, K) coefficients in units of each component's standard deviation."""
    x = np.asarray(images, np.float64).reshape(len(images), -1) - np.asarray(prior.mean, np.float64)
    return (x @ np.asarray(prior.basis, np.float64).T / np.asarray(prior.std, np.float64)).astype(np.float32)


def coefficient_image(prior: ImagePrior, coefs: Any, height: int, width: int) -> np.ndarray:
    """(N, K) coefficients -> (N, H, W, 3) images, not clipped (param='pca' inverts them exactly)."""
    c = np.asarray(coefs, np.float64)
    if c.ndim != 2:
        raise ImagePriorError(f"coefficients must be (N, {prior.components}), got shape {c.shape}")
    c = c * np.asarray(prior.std, np.float64)
    flat = np.asarray(prior.mean, np.float64) + c @ np.asarray(prior.basis, np.float64)
    return flat.reshape(len(c), int(height), int(width), 3).astype(np.float32)


def fit_conditional_prior(prior: ImagePrior, images: Any, attributes: Any, attribute_mask: Any = None,
                          lam: float = joint_lib.DEFAULT_JOINT_LAMBDA) -> joint_lib.JointModel:
    """The joint linear-Gaussian model of the prior's coefficients given the attribute vector, in closed
    form (ridge, as joint.py fits activations): what the requested attributes say about the image."""
    attributes = np.asarray(attributes, np.float32)
    if attributes.ndim != 2 or len(attributes) != len(images):
        raise ImagePriorError(f"need one attribute vector per image, got {attributes.shape} for {len(images)} images")
    coefs = coefficients(prior, images)
    return joint_lib.fit_joint([(coefs, attributes, attribute_mask)], attributes.shape[1], coefs.shape[1], lam=lam)
