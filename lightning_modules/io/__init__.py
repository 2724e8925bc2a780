"""Files in and out: checkpoints and the model rebuilt from them, networks built from config without running
anything a file names, the public StyleGAN2 formats (importers, exporters, NVlabs' pickles read without their code),
model folders, a pretrained generator to start from, and the W+ targets of a projection."""
