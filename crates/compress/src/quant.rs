//! placeholder
pub(crate) fn write_safetensors(t: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)], meta: Option<std::collections::HashMap<String, String>>) -> Result<Vec<u8>, crate::CompressError> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = t.iter().map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| crate::CompressError::Invalid(e.to_string()))?))).collect::<Result<_, crate::CompressError>>()?;
    safetensors::serialize(views, meta).map_err(|e| crate::CompressError::Invalid(e.to_string()))
}
