/**
 * The `workerd` npm package (CommonJS): `module.exports.default` is the path of the workerd binary,
 * which Node's ESM import hands over as `default.default`.
 */
declare module "workerd" {
  const pkg: { readonly default: string };
  export default pkg;
  /** The newest compatibility date this binary supports. */
  export const compatibilityDate: string;
}
