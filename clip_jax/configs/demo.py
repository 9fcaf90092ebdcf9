"""The demo: a small ViT CLIP trained from scratch on synthetic shapes on a laptop-class CPU.

`python -m clip_jax.demo` runs it end to end (dataset build, training, zero-shot evaluation on
the held-out test split, report); `python main.py --config configs/demo.py --workdir DIR`
trains it alone. Sized for 10 minutes on 2 CPU cores and zero-shot top-1 near 90 % on the
48-way colour x shape test split (measured: README, "What the demo does"): colours are learnt
in a few hundred steps, shapes (the hard half at 32 px) need the rest.
"""

from clip_jax.configs import base


def get_config():
    c = base.get_config("demo-vit", lr=3e-3)
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.scan_layers = False
    c.batch_size = 128
    c.total_steps = 3500
    c.warmup_steps = 100
    c.optimizer.weight_decay = 0.1
    c.log_every_steps = 50
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 1
    c.data.synthetic.image_size = 32
    c.data.synthetic.num_train = 20_000
    c.data.synthetic.num_validation = 480
    c.data.synthetic.num_test = 2400
    c.data.augment.scale = (0.9, 1.0)  # small shapes must stay in the crop
    # Zero-shot top-1 on the validation split for the accuracy curve; the demo evaluates
    # zero-shot and retrieval on the test split at the end.
    c.eval.every_steps = 500
    c.eval.evaluators = "zero_shot"
    c.eval.batch_size = 240
    # Every evaluator that prompts (its zero-shot line included) uses the dataset's templates,
    # so one table never shows two zero-shot accuracies of the same split.
    for evaluator in ("zero_shot", "few_shot", "robustness"):
        c.eval[evaluator].heldout.templates = "synthetic_shapes"
    return c
