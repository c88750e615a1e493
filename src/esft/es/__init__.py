"""Evolution Strategies: keyed noise, fitness shaping, the population update and the trainer."""

from esft.es.config import ESConfig
from esft.es.noise import noise_key, tensor_noise
from esft.es.population import Population
from esft.es.shaping import shape_fitness

__all__ = ["ESConfig", "Population", "noise_key", "shape_fitness", "tensor_noise"]
