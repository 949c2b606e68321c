"""A user agent loaded by spec (``example_agents:make``), as a researcher would plug one in."""


class FirstAdmissible:
    name = "first-admissible"

    def reset(self, env, observation, info):
        self.turn = 0

    def act(self, observation, info):
        self.turn += 1
        actions = [a for a in (info.get("admissible_actions") or []) if "<" not in a]
        return actions[self.turn % len(actions)] if actions else "look"


def make(env_name, seed):
    return FirstAdmissible()


def not_an_agent(env_name, seed):
    return object()


class Sleeper(FirstAdmissible):
    """Takes ``seconds`` per action: a stuck agent or env for the engine's timeouts."""

    seconds = 3.0

    def act(self, observation, info):
        import time

        time.sleep(self.seconds)
        return super().act(observation, info)


def slow(env_name, seed):
    return Sleeper()
