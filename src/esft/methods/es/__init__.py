"""Evolution Strategies: the ES engine (keyed noise from `esft.noise`, fitness shaping, the population
update, the trainer) and the methods that run on it: ES (`run`), LBES (`lbes`) and ES on a vLLM engine
(`vllm_trainer`, `vllm_worker`)."""

from esft.methods.es.config import ESConfig
from esft.methods.es.population import Population
from esft.methods.es.shaping import shape_fitness

__all__ = ["ESConfig", "Population", "shape_fitness"]
