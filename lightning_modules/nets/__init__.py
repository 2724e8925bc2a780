"""The networks: the audio encoder, StyleGAN2 (G and D, the face-identity head on D's trunk), the DCGAN and
StyleGAN v1 baselines, the voice's way into the generator (z, w or W+), and the projection of images into W+."""
