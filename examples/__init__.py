"""Example models that models.yaml lists; the README's main job ports them."""
