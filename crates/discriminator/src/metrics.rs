//! How well a scorer agrees with the verifier: ranking (AUC) and calibration (expected
//! calibration error). Together they are the *proxy gap* the reward-hacking alarm watches.

/// Area under the ROC curve of `scores` against `labels` (Mann-Whitney, ties count half).
/// `None` when only one class is present: agreement is then undefined, not perfect.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties, then the rank-sum statistic of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * rank;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Expected calibration error over `bins` equal-width bins: the mean |confidence - accuracy|
/// weighted by how many scores fall in each bin. 0 for an empty input.
pub fn calibration_error(scores: &[f32], labels: &[bool], bins: usize) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let mut sum_score = vec![0.0f64; bins];
    let mut sum_label = vec![0.0f64; bins];
    let mut count = vec![0usize; bins];
    for (&s, &l) in scores.iter().zip(labels) {
        let b = ((s.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1);
        sum_score[b] += f64::from(s);
        sum_label[b] += f64::from(u8::from(l));
        count[b] += 1;
    }
    let n = scores.len() as f64;
    (0..bins).filter(|&b| count[b] > 0).map(|b| (sum_score[b] - sum_label[b]).abs() / n).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_ranks_positives_above_negatives() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5), "ties count half");
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &labels), Some(0.75));
        assert_eq!(auc(&[0.3, 0.6], &[true, true]), None);
    }

    #[test]
    fn calibration_error_is_zero_only_when_confidence_matches_accuracy() {
        // 0.25 confidence, one in four right: calibrated.
        assert!(calibration_error(&[0.25; 4], &[true, false, false, false], 10) < 1e-9);
        // Always 0.9 confident, never right.
        assert!((calibration_error(&[0.9; 10], &[false; 10], 10) - 0.9).abs() < 1e-6);
        assert_eq!(calibration_error(&[], &[], 10), 0.0);
    }
}
