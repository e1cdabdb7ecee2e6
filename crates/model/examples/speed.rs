use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use evolve_model::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (d, layers, ff, batch, seq) = (args[0], args[1], args[2], args[3], args[4]);
    let config = LlamaConfig::for_bytes(d, ff, layers, 4, 4, 64);
    let device = cpu_device().autodiff();
    device.seed(1);
    let mut model = Llama::init(&config, &device);
    println!("params {}", config.num_params());
    let mut optim = AdamWConfig::new().init();
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i * 7 % 250) as i64).collect();
    let tgt: Vec<i64> = (0..batch * seq).map(|i| (i * 11 % 250) as i64).collect();
    let steps = 20;
    let mut t0 = Instant::now();
    for s in 0..steps + 3 {
        if s == 3 { t0 = Instant::now(); }
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);
        let y = Tensor::<3, Int>::from_data(TensorData::new(tgt.clone(), [batch, seq, 1]), &device);
        let logits = model.forward(x, None);
        let loss = log_softmax(logits, 2).gather(2, y).mean().neg();
        let l = loss.clone().into_scalar::<f32>();
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, g);
        if s == steps + 2 { println!("loss {l}"); }
    }
    let dt = t0.elapsed().as_secs_f64();
    println!("train {:.0} tok/s ({:.1} ms/step)", (steps * batch * seq) as f64 / dt, dt * 1e3 / steps as f64);
    let m = model.valid();
    let dev = cpu_device();
    let prompts: Vec<Vec<u32>> = (0..256).map(|i| (0..12).map(|j| ((i + j) % 200) as u32).collect()).collect();
    let t0 = Instant::now();
    let out = decode_batch(&m, &prompts, &DecodeOptions::greedy(8), &dev);
    let dt = t0.elapsed().as_secs_f64();
    println!("greedy decode 256x8: {:.2}s, {:.0} new tok/s", dt, out.iter().map(|o| o.len()).sum::<usize>() as f64 / dt);
}
