"""Inputs: tokenizer, image preprocessing (numpy and TF), tf.data pipelines, labelled eval sources."""
