//! Sample quality, measured by the tool itself with its own MNIST classifier ([`super::classifier`]):
//!
//! - **accuracy**: how often the classifier sees the digit that was asked for (class-conditioned samples);
//! - **FD** ("FID for MNIST"): the Frechet distance between Gaussians fitted to the classifier's penultimate
//!   features of the samples and of the MNIST test set,
//!   |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), computed in f64.

use tch::{Device, Kind, Tensor};

use super::classifier::{agreement, Classifier};

/// Mean [D] and covariance [D, D] (unbiased) of features [N, D], in f64.
pub fn moments(features: &Tensor) -> (Tensor, Tensor) {
    let f = features.to_kind(Kind::Double).to_device(Device::Cpu);
    let n = f.size()[0];
    let mean = f.mean_dim(0, false, Kind::Double);
    let centred = &f - &mean;
    let cov = centred.transpose(0, 1).matmul(&centred) / ((n - 1).max(1) as f64);
    (mean, cov)
}

/// The symmetric square root of a symmetric positive semi-definite matrix (negative rounding eigenvalues -> 0).
fn sqrt_psd(m: &Tensor) -> Tensor {
    let sym = (m + m.transpose(0, 1)) / 2.0;
    let (values, vectors) = sym.linalg_eigh("L");
    let root = values.clamp_min(0.0).sqrt();
    (&vectors * root.unsqueeze(0)).matmul(&vectors.transpose(0, 1))
}

/// Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b).
pub fn frechet_distance(a: &(Tensor, Tensor), b: &(Tensor, Tensor)) -> f64 {
    let (mean_a, cov_a) = a;
    let (mean_b, cov_b) = b;
    let diff = (mean_a - mean_b).square().sum(Kind::Double).double_value(&[]);
    let root_a = sqrt_psd(cov_a);
    let inner = root_a.matmul(cov_b).matmul(&root_a);
    let inner = (&inner + inner.transpose(0, 1)) / 2.0;
    let tr_sqrt = inner
        .linalg_eigh("L")
        .0
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let tr = |c: &Tensor| c.trace().double_value(&[]);
    let distance = diff + tr(cov_a) + tr(cov_b) - 2.0 * tr_sqrt;
    // Rounding can take a distance of ~0 below 0; a NaN (non-finite features) must stay NaN, which `max` would
    // turn into a perfect 0.
    match distance.is_nan() {
        true => distance,
        false => distance.max(0.0),
    }
}

/// Quality of a set of images against reference feature moments.
#[derive(Clone, Debug)]
pub struct Quality {
    pub n: usize,
    /// Fraction classified as their requested digit (None without labels).
    pub accuracy: Option<f64>,
    pub fd: f64,
}

/// Scores images [N, 1, 28, 28] in [0, 1] (with the digits they were asked to be, if any).
pub fn score(
    classifier: &Classifier,
    images: &Tensor,
    labels: Option<&[u8]>,
    reference: &(Tensor, Tensor),
) -> Result<Quality, tch::TchError> {
    let (features, predictions) = classifier.features_and_predictions(images)?;
    let accuracy = labels.map(|labels| agreement(&predictions, labels));
    Ok(Quality {
        n: predictions.len(),
        accuracy,
        fd: frechet_distance(&moments(&features), reference),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms: identical Gaussians are at distance 0; shifting the mean by v adds |v|^2; for diagonal
    /// covariances the distance is sum (sqrt(a_i) - sqrt(b_i))^2.
    #[test]
    fn frechet_distance_closed_forms() {
        let mean = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let cov = Tensor::from_slice(&[4.0f64, 9.0, 1.0]).diag(0);
        let a = (mean.shallow_clone(), cov.shallow_clone());
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
        let shifted = (&mean + Tensor::from_slice(&[3.0f64, 0.0, 4.0]), cov.shallow_clone());
        assert!((frechet_distance(&a, &shifted) - 25.0).abs() < 1e-9);
        let other = (mean.shallow_clone(), Tensor::from_slice(&[1.0f64, 1.0, 1.0]).diag(0));
        // (2-1)^2 + (3-1)^2 + (1-1)^2 = 5
        assert!((frechet_distance(&a, &other) - 5.0).abs() < 1e-9);
        // Non-finite features are no distance at all, never a perfect one.
        let broken = (Tensor::from_slice(&[f64::NAN, 2.0, 3.0]), cov.shallow_clone());
        assert!(frechet_distance(&a, &broken).is_nan());
    }

    /// Full covariances, where the matrix square root couples the dimensions (the diagonal case above cannot tell
    /// sqrt(A B) from sqrt(A) sqrt(B)). SciPy 1.17 (what the reference FID code calls):
    /// `m1, m2 = np.array([1., 2, 3]), np.array([.5, -1, 2])`
    /// `A = np.array([[4., 1, .5], [1, 3, .2], [.5, .2, 2]]); B = np.array([[2., -.3, .1], [-.3, 1.5, .4], [.1, .4, 1]])`
    /// `((m1 - m2)**2).sum() + np.trace(A) + np.trace(B) - 2 * np.trace(scipy.linalg.sqrtm(A @ B)).real`
    /// = 11.35988350964362
    #[test]
    fn frechet_distance_matches_scipy_for_full_covariances() {
        let a = (
            Tensor::from_slice(&[1.0f64, 2.0, 3.0]),
            Tensor::from_slice(&[4.0f64, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0]).view([3, 3]),
        );
        let b = (
            Tensor::from_slice(&[0.5f64, -1.0, 2.0]),
            Tensor::from_slice(&[2.0f64, -0.3, 0.1, -0.3, 1.5, 0.4, 0.1, 0.4, 1.0]).view([3, 3]),
        );
        let fd = frechet_distance(&a, &b);
        assert!((fd - 11.35988350964362).abs() < 1e-9, "{fd}");
        // The distance is symmetric.
        assert!((frechet_distance(&b, &a) - fd).abs() < 1e-9);
    }

    #[test]
    fn moments_match_numpy_conventions() {
        // numpy: np.cov([[1, 2], [3, 6], [5, 10]], rowvar=False) = [[4, 8], [8, 16]]
        let f = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 6.0, 5.0, 10.0]).view([3, 2]);
        let (mean, cov) = moments(&f);
        assert_eq!(Vec::<f64>::try_from(mean).expect("vec"), vec![3.0, 6.0]);
        assert_eq!(
            Vec::<f64>::try_from(cov.flatten(0, -1)).expect("vec"),
            vec![4.0, 8.0, 8.0, 16.0]
        );
    }
}
