"""Stand-in for ``easydict.EasyDict`` (Point-MAE's config module imports it): a dict read by attribute too."""


class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __setattr__(self, name, value):
        self[name] = value
