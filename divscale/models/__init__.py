"""Models: hub ids, wheels and local folders resolved and loaded safetensors-only (hub), the project's own small
policy (tiny_gpt), and batched generation (generation)."""
