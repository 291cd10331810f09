"""Reading config.yaml outside ``nameko run`` (scripts, migrations, tests)."""
import yaml
from nameko.cli.main import setup_yaml_parser


def load_config(path="config.yaml"):
    """The config exactly as ``nameko run --config path`` would see it."""
    setup_yaml_parser()
    with open(path) as stream:
        return yaml.safe_load(stream)
